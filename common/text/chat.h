/* chat.h - the chat format of Qwen models (ChatML) and their end ids.
 *
 * Qwen2/Qwen3 (and the Qwen3-Omni thinker) are trained on ChatML turns:
 *
 *   <|im_start|>user\n{text}<|im_end|>\n<|im_start|>assistant\n
 *
 * after which the model writes its answer and ends the turn with
 * <|im_end|>. A generation therefore stops at any of: <|im_end|>, the
 * eos_token_id of generation_config.json (config.json when that file has
 * none) and the eos_token of tokenizer_config.json. Used by qmoe-run --chat
 * and the coherence gate.
 */
#ifndef QMOE_CHAT_H
#define QMOE_CHAT_H

#include <glib.h>
#include <stddef.h>

#include "format/checkpoint.h"
#include "text/tokenizer.h"

/* The ChatML text of one user turn followed by the opening of the
 * assistant's: "<|im_start|>user\n" TEXT "<|im_end|>\n<|im_start|>assistant\n".
 * TEXT is LEN bytes (may hold NUL). Returns a g_malloc'ed NUL-terminated
 * string (caller g_free()s); *LEN_OUT (if not NULL) gets its length. */
char *chat_user_prompt(const char *text, size_t len, size_t *len_out);

/* Appends to IDS (a GArray of int32_t) the eos_token_id values (a number or
 * an array of numbers) of CK's generation_config.json, or of config.json's
 * text config / top level when generation_config.json has none, each
 * once. Values that are not token ids are ignored. Returns how many ids
 * were appended. */
int chat_eos_ids(const ckpt *ck, GArray *ids);

/* The end-of-turn ids for chat generation: chat_eos_ids(), then the id of
 * <|im_end|> in TOK, then tokenizer_config.json's eos_token (a string or
 * {"content": string}) in CK's directory resolved through TOK; each id
 * once, appended to IDS. A missing tokenizer_config.json adds nothing; one
 * that cannot be parsed is an error naming it (QM_ERR_FORMAT / QM_ERR_IO),
 * and so is an eos_token that TOK does not know. Returns the number of ids
 * appended, or -1 with *err set (IDS then unchanged). */
int chat_end_ids(const ckpt *ck, const tok_t *tok, GArray *ids, GError **err);

#endif
