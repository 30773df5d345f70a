/* mksample_like.c - qmoe-mksample --like: see mksample_like.h.
 *
 * A model is a tree of tensor templates in the order its modules register
 * them (the state_dict order the Hugging Face writer shards in); a group's
 * name may hold "%d", its index. Shards are cut greedily in that order at
 * the release's max_shard_size; inside a shard tensors are sorted by
 * element width (wider first) and then by name, with consecutive offsets
 * (safetensors' order; all-bf16 shards are simply by name), and the
 * header is safetensors' own (compact JSON, __metadata__ first, space
 * padding to 8): with these rules the shard sizes are those of the real
 * files, which like_write checks where the preset knows them.
 *
 * A tensor is bf16 unless its node says otherwise: LK_F32, or LK_FP8 for a
 * block-scaled FP8 linear weight, which stands for two tensors, the
 * F8_E4M3 weight and its `weight_scale_inv` of the preset's block grid and
 * scale dtype, in that order.
 */
#include "mksample_like.h"

#include <cjson/cJSON.h>
#include <errno.h>
#include <openssl/evp.h>
#include <string.h>
#include <unistd.h>
#include <zlib.h>

#include "base/error.h"
#include "base/fs.h"
#include "base/json.h"
#include "base/util.h"
#include "format/safetensors.h"

typedef struct like_node like_node;
struct like_node {
    const char *name;       /* appended to the parent's name; NULL ends a list */
    int first, count;       /* a group repeated count times, "%d" = first.. */
    int ndim;               /* a tensor: its shape (kids NULL) */
    int64_t shape[ST_MAX_DIMS];
    const like_node *kids;  /* a group's members, in registration order */
    int kind;               /* a tensor: LK_BF16 (0), LK_F32 or LK_FP8 */
};

enum { LK_BF16, LK_F32, LK_FP8 };

#define NDIM(...) ((int)(sizeof((int64_t[]){__VA_ARGS__}) / sizeof(int64_t)))
#define T(n, ...) {n, 0, 0, NDIM(__VA_ARGS__), {__VA_ARGS__}, NULL, LK_BF16}
#define G(n, c, ...) {n, 0, c, 0, {0}, (const like_node[]){__VA_ARGS__, {0}}, LK_BF16}
#define GF(n, f, c, ...) {n, f, c, 0, {0}, (const like_node[]){__VA_ARGS__, {0}}, LK_BF16}
#define MLP(p, i, h) T(p "gate_proj.weight", i, h), T(p "up_proj.weight", i, h), \
                     T(p "down_proj.weight", h, i)
/* an FP8 linear weight [o, i] (and its scale), a float32 tensor */
#define Q(n, o, i) {n, 0, 0, 2, {o, i}, NULL, LK_FP8}
#define TF32(n, ...) {n, 0, 0, NDIM(__VA_ARGS__), {__VA_ARGS__}, NULL, LK_F32}
#define QMLP(p, i, h) Q(p "gate_proj.weight", i, h), Q(p "up_proj.weight", i, h), \
                      Q(p "down_proj.weight", h, i)
#define ATTN_NN(p, h, q, kv) T(p "q_proj.weight", q, h), T(p "k_proj.weight", kv, h), \
                             T(p "v_proj.weight", kv, h), T(p "o_proj.weight", h, q)
#define ATTN(p, h, q, kv) ATTN_NN(p, h, q, kv), T(p "q_norm.weight", 128), \
                          T(p "k_norm.weight", 128)
#define QATTN(p, h, q, kv) Q(p "q_proj.weight", q, h), Q(p "k_proj.weight", kv, h), \
                           Q(p "v_proj.weight", kv, h), Q(p "o_proj.weight", h, q), \
                           T(p "q_norm.weight", 128), T(p "k_norm.weight", 128)
#define WB(p, o, i) T(p ".weight", o, i), T(p ".bias", o)
#define NORM2(p, d) T(p ".weight", d), T(p ".bias", d)

/* ---- Qwen/Qwen3-Omni-30B-A3B-Instruct ---- */

#define OMNI_MERGER(p, ln) NORM2(p "ln_q", ln), WB(p "mlp.0", 4608, 4608), WB(p "mlp.2", 2048, 4608)
#define OMNI_PROJ(p) WB(p "linear_fc1", 2048, 2048), WB(p "linear_fc2", 1024, 2048)
/* code2wav's decoder block b: ci channels in, co out, kernel k of the
 * upsampling convolution, three residual units 2-4 */
#define OMNI_DEC(b, ci, co, k)                                                        \
    G("decoder." #b ".block.", 0, T("0.alpha", ci), T("0.beta", ci),                  \
      T("1.conv.weight", ci, co, k), T("1.conv.bias", co),                            \
      GF("%d.", 2, 3, T("act1.alpha", co), T("act1.beta", co),                        \
         T("conv1.conv.weight", co, co, 7), T("conv1.conv.bias", co),                 \
         T("act2.alpha", co), T("act2.beta", co), T("conv2.conv.weight", co, co, 1),  \
         T("conv2.conv.bias", co)))

static const like_node omni_tree[] = {
    G("thinker.audio_tower.", 0,
      G("layers.%d.", 32,
        WB("self_attn.k_proj", 1280, 1280), WB("self_attn.v_proj", 1280, 1280),
        WB("self_attn.q_proj", 1280, 1280), WB("self_attn.out_proj", 1280, 1280),
        NORM2("self_attn_layer_norm", 1280), WB("fc1", 5120, 1280), WB("fc2", 1280, 5120),
        NORM2("final_layer_norm", 1280)),
      NORM2("ln_post", 1280),
      T("conv2d1.weight", 480, 1, 3, 3), T("conv2d1.bias", 480),
      T("conv2d2.weight", 480, 480, 3, 3), T("conv2d2.bias", 480),
      T("conv2d3.weight", 480, 480, 3, 3), T("conv2d3.bias", 480),
      T("conv_out.weight", 1280, 7680), WB("proj1", 1280, 1280), WB("proj2", 2048, 1280)),
    G("thinker.visual.", 0,
      T("patch_embed.proj.weight", 1152, 3, 2, 16, 16), T("patch_embed.proj.bias", 1152),
      T("pos_embed.weight", 2304, 1152),
      G("blocks.%d.", 27, NORM2("norm1", 1152), NORM2("norm2", 1152),
        WB("attn.qkv", 3456, 1152), WB("attn.proj", 1152, 1152),
        WB("mlp.linear_fc1", 4304, 1152), WB("mlp.linear_fc2", 1152, 4304)),
      OMNI_MERGER("merger.", 1152),
      G("merger_list.%d.", 3, OMNI_MERGER("", 4608))),
    G("thinker.", 0,
      T("model.embed_tokens.weight", 152064, 2048),
      G("model.layers.%d.", 48,
        ATTN("self_attn.", 2048, 4096, 512), T("mlp.gate.weight", 128, 2048),
        G("mlp.experts.%d.", 128, MLP("", 768, 2048)),
        T("input_layernorm.weight", 2048), T("post_attention_layernorm.weight", 2048)),
      T("model.norm.weight", 2048), T("lm_head.weight", 152064, 2048)),
    G("talker.", 0,
      G("model.layers.%d.", 20,
        ATTN("self_attn.", 1024, 2048, 256), T("mlp.gate.weight", 128, 1024),
        G("mlp.experts.%d.", 128, MLP("", 384, 1024)),
        MLP("mlp.shared_expert.", 768, 1024), T("mlp.shared_expert_gate.weight", 1, 1024),
        T("input_layernorm.weight", 1024), T("post_attention_layernorm.weight", 1024)),
      T("model.norm.weight", 1024), T("model.codec_embedding.weight", 3072, 1024),
      OMNI_PROJ("text_projection."), OMNI_PROJ("hidden_projection."),
      T("codec_head.weight", 3072, 1024),
      G("code_predictor.", 0,
        G("model.layers.%d.", 5,
          ATTN("self_attn.", 1024, 2048, 1024), MLP("mlp.", 3072, 1024),
          T("input_layernorm.weight", 1024), T("post_attention_layernorm.weight", 1024)),
        T("model.norm.weight", 1024),
        G("model.codec_embedding.%d.", 15, T("weight", 2048, 1024)),
        G("lm_head.%d.", 15, T("weight", 2048, 1024)))),
    G("code2wav.", 0,
      G("pre_transformer.layers.%d.", 8,
        ATTN_NN("self_attn.", 1024, 1024, 1024), MLP("mlp.", 3072, 1024),
        T("input_layernorm.weight", 1024), T("post_attention_layernorm.weight", 1024),
        T("self_attn_layer_scale.scale", 1024), T("mlp_layer_scale.scale", 1024)),
      T("pre_transformer.norm.weight", 1024), T("code_embedding.weight", 32768, 1024),
      G("upsample.%d.", 2,
        T("0.conv.weight", 1024, 1024, 2), T("0.conv.bias", 1024),
        T("1.dwconv.conv.weight", 1024, 1, 7), T("1.dwconv.conv.bias", 1024),
        NORM2("1.norm", 1024), WB("1.pwconv1", 4096, 1024), WB("1.pwconv2", 1024, 4096),
        T("1.gamma", 1024)),
      T("decoder.0.conv.weight", 1536, 1024, 7), T("decoder.0.conv.bias", 1536),
      OMNI_DEC(1, 1536, 768, 16), OMNI_DEC(2, 768, 384, 10), OMNI_DEC(3, 384, 192, 8),
      OMNI_DEC(4, 192, 96, 6),
      T("decoder.5.alpha", 96), T("decoder.5.beta", 96),
      T("decoder.6.conv.weight", 1, 96, 7), T("decoder.6.conv.bias", 1)),
    {0},
};

/* (size, sha256 = the LFS object id) of the 15 shards at the revision */
static const uint64_t omni_sizes[] = {
    4997899632, 4997754216, 4997754216, 4997755648, 4997755792, 4997755792, 4997755792,
    4997755792, 4997755792, 4997755792, 4997755792, 4997755792, 4999771808, 4996618552,
    553698794,
};
static const char *const omni_oids[] = {
    "f95d142b727fbd0698f0ed9478e222d4f29467df855e21862e46bd1401049065",
    "320c1f31f7ddc4efd2501891590eca2c481ce4eca3db33d70ebbb637dae85764",
    "306f06b05ef032f1fa51eb62e72c3432324e7a084fa0d15ed17ff856adffcf33",
    "4cb551f433bfb4d83a5843e433e74688d71a96eeb1b62217b37d719026d559b5",
    "8aec5e8cc0e0b179a81f690af31a1149238f4b1d18ac60e3f690020fdf7d915f",
    "8ff40a3d9e9c59a35a10257c1c5b216f472e6a102a4d6059bd31183eee03cb4c",
    "f6d84cc1d47178850f9ba1fe9c01f45ee63d9a8b9975f92821ee2b4a0387860b",
    "9f369ccdc9d2d2a55df794005b23cdbce44494a72e4a0069a150ae471cfea720",
    "980f754b21c4b20f36e02d184b792f5625f7c9d24b8a5c9da94287cf3cfde11b",
    "5c5a798376321d74df2eb3f235e1c8c68669f09b0c753b5698a16e681204d808",
    "6f7c051bd391c89279b43e7342ff4a243ad2ba2144f4aa62233fd2b02d72fce0",
    "a8b09a9367cd31ebf928e87b9eaf002492379d9d21d352b480854c2fbe6d9978",
    "d9b7441c3a33e066d109cd6338e74ed680de9aa407d4df66eba5cb3c15c6d738",
    "73f09f187ff7b469a8937b39b8ac772e539e0d61311526c345558c5e6a6eb09a",
    "68880d566a50643807a4e73f5227c4f468bb31532925ed5fae78a51bdd39492a",
};

/* config.json as transformers 4.57 wrote it (keys sorted; nested configs
 * carry every PretrainedConfig default), compact here and indented by
 * put_json_text as the release has it. */
static const char omni_config[] =
    "{\"architectures\":[\"Qwen3OmniMoeForConditionalGeneration\"],\"assistant_token_id\":77091,\""
    "code2wav_config\":{\"attention_bias\":false,\"attention_dropout\":0.0,\"codebook_dim\":512,\"c"
    "odebook_size\":2048,\"decoder_dim\":1536,\"hidden_act\":\"silu\",\"hidden_size\":1024,\"intermed"
    "iate_size\":3072,\"layer_scale_initial_scale\":0.01,\"max_position_embeddings\":8000,\"model"
    "_type\":\"\",\"num_attention_heads\":16,\"num_hidden_layers\":8,\"num_key_value_heads\":16,\"num"
    "_quantizers\":16,\"num_semantic_quantizers\":1,\"rms_norm_eps\":1e-05,\"rope_theta\":10000,\"s"
    "emantic_codebook_size\":4096,\"sliding_window\":72,\"upsample_rates\":[8,5,4,3],\"upsampling"
    "_ratios\":[2,2],\"vector_quantization_hidden_dimension\":512},\"dtype\":\"bfloat16\",\"enable_"
    "audio_output\":true,\"im_end_token_id\":151645,\"im_start_token_id\":151644,\"model_type\":\"q"
    "wen3_omni_moe\",\"system_token_id\":8948,\"talker_config\":{\"accept_hidden_layer\":24,\"audio"
    "_end_token_id\":151670,\"audio_start_token_id\":151669,\"audio_token_id\":151675,\"code_pred"
    "ictor_config\":{\"_name_or_path\":\"\",\"add_cross_attention\":false,\"architectures\":null,\"at"
    "tention_bias\":false,\"attention_dropout\":0,\"bad_words_ids\":null,\"begin_suppress_tokens\""
    ":null,\"bos_token_id\":null,\"chunk_size_feed_forward\":0,\"cross_attention_hidden_size\":nu"
    "ll,\"decoder_start_token_id\":null,\"diversity_penalty\":0.0,\"do_sample\":true,\"dtype\":null"
    ",\"early_stopping\":false,\"encoder_no_repeat_ngram_size\":0,\"eos_token_id\":null,\"exponent"
    "ial_decay_length_penalty\":null,\"finetuning_task\":null,\"forced_bos_token_id\":null,\"forc"
    "ed_eos_token_id\":null,\"head_dim\":128,\"hidden_act\":\"silu\",\"hidden_size\":1024,\"id2label\""
    ":{\"0\":\"LABEL_0\",\"1\":\"LABEL_1\"},\"initializer_range\":0.02,\"intermediate_size\":3072,\"is_d"
    "ecoder\":false,\"is_encoder_decoder\":false,\"label2id\":{\"LABEL_0\":0,\"LABEL_1\":1},\"layer_t"
    "ypes\":[\"full_attention\",\"full_attention\",\"full_attention\",\"full_attention\",\"full_atten"
    "tion\"],\"length_penalty\":1.0,\"max_length\":20,\"max_position_embeddings\":32768,\"max_windo"
    "w_layers\":28,\"min_length\":0,\"model_type\":\"qwen3_omni_moe_talker_code_predictor\",\"no_re"
    "peat_ngram_size\":0,\"num_attention_heads\":16,\"num_beam_groups\":1,\"num_beams\":1,\"num_cod"
    "e_groups\":16,\"num_hidden_layers\":5,\"num_key_value_heads\":8,\"num_return_sequences\":1,\"o"
    "utput_attentions\":false,\"output_hidden_states\":false,\"output_scores\":false,\"pad_token_"
    "id\":null,\"prefix\":null,\"problem_type\":null,\"pruned_heads\":{},\"remove_invalid_values\":f"
    "alse,\"repetition_penalty\":1.0,\"return_dict\":true,\"return_dict_in_generate\":false,\"rms_"
    "norm_eps\":1e-06,\"rope_scaling\":null,\"rope_theta\":1000000,\"sep_token_id\":null,\"sliding_"
    "window\":null,\"suppress_tokens\":null,\"task_specific_params\":null,\"temperature\":1.0,\"tf_"
    "legacy_loss\":false,\"tie_encoder_decoder\":false,\"tie_word_embeddings\":false,\"tokenizer_"
    "class\":null,\"top_k\":10,\"top_p\":1.0,\"torchscript\":false,\"typical_p\":1.0,\"use_bfloat16\":"
    "false,\"use_cache\":true,\"use_sliding_window\":false,\"vocab_size\":2048},\"codec_bos_id\":21"
    "49,\"codec_eos_token_id\":2150,\"codec_nothink_id\":2155,\"codec_pad_id\":2148,\"codec_think_"
    "bos_id\":2156,\"codec_think_eos_id\":2157,\"image_token_id\":151655,\"model_type\":\"qwen3_omn"
    "i_moe_talker\",\"num_code_groups\":16,\"output_router_logits\":false,\"position_id_per_secon"
    "ds\":13,\"seconds_per_chunk\":2,\"spatial_merge_size\":2,\"speaker_id\":{\"aiden\":2303,\"chelsi"
    "e\":2301,\"ethan\":2302},\"text_config\":{\"attention_bias\":false,\"attention_dropout\":0,\"dec"
    "oder_sparse_step\":1,\"head_dim\":128,\"hidden_act\":\"silu\",\"hidden_size\":1024,\"initializer"
    "_range\":0.02,\"intermediate_size\":2048,\"max_position_embeddings\":65536,\"mlp_only_layers"
    "\":[],\"moe_intermediate_size\":384,\"norm_topk_prob\":true,\"num_attention_heads\":16,\"num_e"
    "xperts\":128,\"num_experts_per_tok\":6,\"num_hidden_layers\":20,\"num_key_value_heads\":2,\"rm"
    "s_norm_eps\":1e-06,\"rope_scaling\":{\"interleaved\":true,\"mrope_section\":[24,20,20],\"rope_"
    "type\":\"default\",\"type\":\"default\"},\"rope_theta\":1000000,\"router_aux_loss_coef\":0.001,\"s"
    "hared_expert_intermediate_size\":768,\"sliding_window\":null,\"use_cache\":true,\"use_slidin"
    "g_window\":false,\"vocab_size\":3072},\"thinker_hidden_size\":2048,\"video_token_id\":151656,"
    "\"vision_start_token_id\":151652},\"thinker_config\":{\"audio_config\":{\"_name_or_path\":\"\",\""
    "activation_dropout\":0,\"activation_function\":\"gelu\",\"add_cross_attention\":false,\"archit"
    "ectures\":null,\"attention_dropout\":0,\"bad_words_ids\":null,\"begin_suppress_tokens\":null,"
    "\"bos_token_id\":null,\"chunk_size_feed_forward\":0,\"conv_chunksize\":500,\"cross_attention_"
    "hidden_size\":null,\"d_model\":1280,\"decoder_start_token_id\":null,\"diversity_penalty\":0.0"
    ",\"do_sample\":true,\"downsample_hidden_size\":480,\"dropout\":0,\"dtype\":null,\"early_stoppin"
    "g\":false,\"encoder_attention_heads\":20,\"encoder_ffn_dim\":5120,\"encoder_layers\":32,\"enco"
    "der_no_repeat_ngram_size\":0,\"eos_token_id\":null,\"exponential_decay_length_penalty\":nul"
    "l,\"finetuning_task\":null,\"forced_bos_token_id\":null,\"forced_eos_token_id\":null,\"id2lab"
    "el\":{\"0\":\"LABEL_0\",\"1\":\"LABEL_1\"},\"initializer_range\":0.02,\"is_decoder\":false,\"is_enco"
    "der_decoder\":false,\"label2id\":{\"LABEL_0\":0,\"LABEL_1\":1},\"length_penalty\":1.0,\"max_leng"
    "th\":20,\"max_source_positions\":1500,\"min_length\":0,\"model_type\":\"qwen3_omni_moe_audio_e"
    "ncoder\",\"n_window\":50,\"n_window_infer\":800,\"no_repeat_ngram_size\":0,\"num_beam_groups\":"
    "1,\"num_beams\":1,\"num_hidden_layers\":32,\"num_mel_bins\":128,\"num_return_sequences\":1,\"ou"
    "tput_attentions\":false,\"output_dim\":2048,\"output_hidden_states\":false,\"output_scores\":"
    "false,\"pad_token_id\":null,\"prefix\":null,\"problem_type\":null,\"pruned_heads\":{},\"remove_"
    "invalid_values\":false,\"repetition_penalty\":1.0,\"return_dict\":true,\"return_dict_in_gene"
    "rate\":false,\"scale_embedding\":false,\"sep_token_id\":null,\"suppress_tokens\":null,\"task_s"
    "pecific_params\":null,\"temperature\":1.0,\"tf_legacy_loss\":false,\"tie_encoder_decoder\":fa"
    "lse,\"tie_word_embeddings\":true,\"tokenizer_class\":null,\"top_k\":10,\"top_p\":1.0,\"torchscr"
    "ipt\":false,\"typical_p\":1.0,\"use_bfloat16\":false},\"audio_end_token_id\":151670,\"audio_st"
    "art_token_id\":151669,\"audio_token_id\":151675,\"dtype\":\"bfloat16\",\"image_token_id\":15165"
    "5,\"initializer_range\":0.02,\"model_type\":\"qwen3_omni_moe_thinker\",\"position_id_per_seco"
    "nds\":13,\"seconds_per_chunk\":2,\"text_config\":{\"_name_or_path\":\"\",\"add_cross_attention\":"
    "false,\"architectures\":null,\"attention_bias\":false,\"attention_dropout\":0.0,\"bad_words_i"
    "ds\":null,\"begin_suppress_tokens\":null,\"bos_token_id\":null,\"chunk_size_feed_forward\":0,"
    "\"cross_attention_hidden_size\":null,\"decoder_sparse_step\":1,\"decoder_start_token_id\":nu"
    "ll,\"diversity_penalty\":0.0,\"do_sample\":true,\"dtype\":null,\"early_stopping\":false,\"encod"
    "er_no_repeat_ngram_size\":0,\"eos_token_id\":null,\"exponential_decay_length_penalty\":null"
    ",\"finetuning_task\":null,\"forced_bos_token_id\":null,\"forced_eos_token_id\":null,\"head_di"
    "m\":128,\"hidden_act\":\"silu\",\"hidden_size\":2048,\"id2label\":{\"0\":\"LABEL_0\",\"1\":\"LABEL_1\"}"
    ",\"initializer_range\":0.02,\"intermediate_size\":768,\"is_decoder\":false,\"is_encoder_decod"
    "er\":false,\"label2id\":{\"LABEL_0\":0,\"LABEL_1\":1},\"length_penalty\":1.0,\"max_length\":20,\"m"
    "ax_position_embeddings\":65536,\"min_length\":0,\"mlp_only_layers\":[],\"model_type\":\"qwen3_"
    "omni_moe_text\",\"moe_intermediate_size\":768,\"no_repeat_ngram_size\":0,\"norm_topk_prob\":t"
    "rue,\"num_attention_heads\":32,\"num_beam_groups\":1,\"num_beams\":1,\"num_experts\":128,\"num_"
    "experts_per_tok\":8,\"num_hidden_layers\":48,\"num_key_value_heads\":4,\"num_return_sequence"
    "s\":1,\"output_attentions\":false,\"output_hidden_states\":false,\"output_router_logits\":fal"
    "se,\"output_scores\":false,\"pad_token_id\":null,\"prefix\":null,\"problem_type\":null,\"pruned"
    "_heads\":{},\"remove_invalid_values\":false,\"repetition_penalty\":1.0,\"return_dict\":true,\""
    "return_dict_in_generate\":false,\"rms_norm_eps\":1e-06,\"rope_scaling\":{\"interleaved\":true"
    ",\"mrope_interleaved\":true,\"mrope_section\":[24,20,20],\"rope_type\":\"default\",\"type\":\"def"
    "ault\"},\"rope_theta\":1000000,\"router_aux_loss_coef\":0.001,\"sep_token_id\":null,\"shared_e"
    "xpert_intermediate_size\":0,\"sliding_window\":null,\"suppress_tokens\":null,\"task_specific"
    "_params\":null,\"temperature\":1.0,\"tf_legacy_loss\":false,\"tie_encoder_decoder\":false,\"ti"
    "e_word_embeddings\":false,\"tokenizer_class\":null,\"top_k\":10,\"top_p\":1.0,\"torchscript\":f"
    "alse,\"typical_p\":1.0,\"use_bfloat16\":false,\"use_cache\":true,\"use_qk_norm\":true,\"use_sli"
    "ding_window\":false,\"vocab_size\":152064},\"user_token_id\":872,\"video_token_id\":151656,\"v"
    "ision_config\":{\"_name_or_path\":\"\",\"add_cross_attention\":false,\"apply_vit_abs_pos_embed"
    "\":true,\"architectures\":null,\"bad_words_ids\":null,\"begin_suppress_tokens\":null,\"bos_tok"
    "en_id\":null,\"chunk_size_feed_forward\":0,\"cross_attention_hidden_size\":null,\"decoder_st"
    "art_token_id\":null,\"deepstack_visual_indexes\":[8,16,24],\"depth\":27,\"diversity_penalty\""
    ":0.0,\"do_sample\":true,\"dtype\":null,\"early_stopping\":false,\"encoder_no_repeat_ngram_siz"
    "e\":0,\"eos_token_id\":null,\"exponential_decay_length_penalty\":null,\"finetuning_task\":nul"
    "l,\"forced_bos_token_id\":null,\"forced_eos_token_id\":null,\"hidden_act\":\"gelu_pytorch_tan"
    "h\",\"hidden_size\":1152,\"id2label\":{\"0\":\"LABEL_0\",\"1\":\"LABEL_1\"},\"image_size\":768,\"in_ch"
    "annels\":3,\"in_chans\":3,\"initializer_range\":0.02,\"intermediate_size\":4304,\"is_decoder\":"
    "false,\"is_encoder_decoder\":false,\"label2id\":{\"LABEL_0\":0,\"LABEL_1\":1},\"length_penalty\""
    ":1.0,\"max_length\":20,\"min_length\":0,\"model_type\":\"qwen3_omni_moe_vision_encoder\",\"no_r"
    "epeat_ngram_size\":0,\"num_beam_groups\":1,\"num_beams\":1,\"num_heads\":16,\"num_position_emb"
    "eddings\":2304,\"num_return_sequences\":1,\"out_hidden_size\":2048,\"output_attentions\":fals"
    "e,\"output_hidden_states\":false,\"output_scores\":false,\"pad_token_id\":null,\"patch_size\":"
    "16,\"prefix\":null,\"problem_type\":null,\"pruned_heads\":{},\"remove_invalid_values\":false,\""
    "repetition_penalty\":1.0,\"return_dict\":true,\"return_dict_in_generate\":false,\"sep_token_"
    "id\":null,\"spatial_merge_size\":2,\"spatial_patch_size\":16,\"suppress_tokens\":null,\"task_s"
    "pecific_params\":null,\"temperature\":1.0,\"temporal_patch_size\":2,\"tf_legacy_loss\":false,"
    "\"tie_encoder_decoder\":false,\"tie_word_embeddings\":true,\"tokenizer_class\":null,\"tokens_"
    "per_second\":2,\"top_k\":10,\"top_p\":1.0,\"torchscript\":false,\"typical_p\":1.0,\"use_bfloat16"
    "\":false},\"vision_end_token_id\":151653,\"vision_start_token_id\":151652},\"transformers_ve"
    "rsion\":\"4.57.0.dev0\",\"tts_bos_token_id\":151672,\"tts_eos_token_id\":151673,\"tts_pad_toke"
    "n_id\":151671,\"user_token_id\":872}";

/* NOT in the release as far as we know (no generation_config.json found):
 * a plausible Qwen chat-model one. */
static const char omni_generation[] =
    "{\"bos_token_id\":151643,\"do_sample\":true,\"eos_token_id\":[151645,151643],"
    "\"pad_token_id\":151643,\"repetition_penalty\":1.05,\"temperature\":0.7,\"top_k\":20,"
    "\"top_p\":0.8,\"transformers_version\":\"4.57.0.dev0\"}";

/* Qwen3-Omni's additions to the Qwen3 vocabulary (ids from its config). */
static const struct { int id; const char *content; } omni_tokens[] = {
    {151669, "<|audio_start|>"}, {151670, "<|audio_end|>"}, {151671, "<tts_pad>"},
    {151672, "<tts_text_bos>"}, {151673, "<tts_text_eod>"},
    {151674, "<tts_text_bos_single>"}, {151675, "<|audio_pad|>"},
};
static const char *const omni_special[] = {"<|audio_start|>", "<|audio_end|>",
                                           "<|audio_pad|>"};

/* ---- Qwen/Qwen3-30B-A3B ---- */

static const like_node qwen3_tree[] = {
    T("model.embed_tokens.weight", 151936, 2048),
    G("model.layers.%d.", 48,
      ATTN("self_attn.", 2048, 4096, 512), T("mlp.gate.weight", 128, 2048),
      G("mlp.experts.%d.", 128, MLP("", 768, 2048)),
      T("input_layernorm.weight", 2048), T("post_attention_layernorm.weight", 2048)),
    T("model.norm.weight", 2048), T("lm_head.weight", 151936, 2048),
    {0},
};

/* From memory of the release's config.json, not checked against the file. */
static const char qwen3_config[] =
    "{\"architectures\":[\"Qwen3MoeForCausalLM\"],\"attention_bias\":false,\"attention_dropout\":0."
    "0,\"bos_token_id\":151643,\"decoder_sparse_step\":1,\"eos_token_id\":151645,\"head_dim\":128,\""
    "hidden_act\":\"silu\",\"hidden_size\":2048,\"initializer_range\":0.02,\"intermediate_size\":614"
    "4,\"max_position_embeddings\":40960,\"max_window_layers\":48,\"mlp_only_layers\":[],\"model_t"
    "ype\":\"qwen3_moe\",\"moe_intermediate_size\":768,\"norm_topk_prob\":true,\"num_attention_head"
    "s\":32,\"num_experts\":128,\"num_experts_per_tok\":8,\"num_hidden_layers\":48,\"num_key_value_"
    "heads\":4,\"output_router_logits\":false,\"rms_norm_eps\":1e-06,\"rope_scaling\":null,\"rope_t"
    "heta\":1000000.0,\"router_aux_loss_coef\":0.001,\"sliding_window\":null,\"tie_word_embedding"
    "s\":false,\"torch_dtype\":\"bfloat16\",\"transformers_version\":\"4.51.0\",\"use_cache\":true,\"us"
    "e_sliding_window\":false,\"vocab_size\":151936}";

/* From memory of the release's generation_config.json, not checked. */
static const char qwen3_generation[] =
    "{\"bos_token_id\":151643,\"do_sample\":true,\"eos_token_id\":[151645,151643],\"pad_token_id\":"
    "151643,\"temperature\":0.6,\"top_k\":20,\"top_p\":0.95,\"transformers_version\":\"4.51.0\"}";

/* ---- Qwen/Qwen3-30B-A3B-FP8 ---- */

/* Qwen3-30B-A3B with every linear weight of the decoder layers in FP8 and
 * the router (mlp.gate), embeddings, norms and lm_head in bf16, as its
 * modules_to_not_convert says. */
static const like_node qwen3_fp8_tree[] = {
    T("model.embed_tokens.weight", 151936, 2048),
    G("model.layers.%d.", 48,
      QATTN("self_attn.", 2048, 4096, 512), T("mlp.gate.weight", 128, 2048),
      G("mlp.experts.%d.", 128, QMLP("", 768, 2048)),
      T("input_layernorm.weight", 2048), T("post_attention_layernorm.weight", 2048)),
    T("model.norm.weight", 2048), T("lm_head.weight", 151936, 2048),
    {0},
};

/* The bf16 release's config (from memory, as qwen3_config) plus the FP8
 * quantization_config as Qwen's FP8 releases write it; the
 * modules_to_not_convert list (lm_head and the 48 routers) is built by
 * like_config below. Not checked against the release's file. */
static const char qwen3_fp8_quant[] =
    "{\"activation_scheme\":\"dynamic\",\"fmt\":\"e4m3\",\"quant_method\":\"fp8\","
    "\"weight_block_size\":[128,128]}";

/* ---- deepseek-ai/DeepSeek-V3 ---- */

#define DS_ATTN                                                                   \
    Q("self_attn.q_a_proj.weight", 1536, 7168), T("self_attn.q_a_layernorm.weight", 1536), \
    Q("self_attn.q_b_proj.weight", 24576, 1536),                                  \
    Q("self_attn.kv_a_proj_with_mqa.weight", 576, 7168),                          \
    T("self_attn.kv_a_layernorm.weight", 512), Q("self_attn.kv_b_proj.weight", 32768, 512), \
    Q("self_attn.o_proj.weight", 7168, 16384)
#define DS_MOE                                                                    \
    G("mlp.experts.%d.", 256, QMLP("", 2048, 7168)), T("mlp.gate.weight", 256, 7168), \
    TF32("mlp.gate.e_score_correction_bias", 256), QMLP("mlp.shared_experts.", 2048, 7168)
#define DS_NORMS T("input_layernorm.weight", 7168), T("post_attention_layernorm.weight", 7168)

/* 61 decoder layers (0-2 dense, 3-60 with 256 routed experts and one
 * shared) and the MTP block as layer 61: a decoder layer plus its own
 * embeddings, enorm, hnorm, eh_proj (bf16) and shared head. */
static const like_node dsv3_tree[] = {
    T("model.embed_tokens.weight", 129280, 7168),
    G("model.layers.%d.", 3, DS_ATTN, QMLP("mlp.", 18432, 7168), DS_NORMS),
    GF("model.layers.%d.", 3, 58, DS_ATTN, DS_MOE, DS_NORMS),
    T("model.norm.weight", 7168), T("lm_head.weight", 129280, 7168),
    G("model.layers.61.", 0, DS_ATTN, DS_MOE, DS_NORMS,
      T("embed_tokens.weight", 129280, 7168), T("enorm.weight", 7168),
      T("hnorm.weight", 7168), T("eh_proj.weight", 7168, 14336),
      T("shared_head.norm.weight", 7168), T("shared_head.head.weight", 129280, 7168)),
    {0},
};

/* From memory of the release's config.json (key order as DeepSeek wrote
 * it, not sorted), not checked against the file. */
static const char dsv3_config[] =
    "{\"architectures\":[\"DeepseekV3ForCausalLM\"],\"attention_bias\":false,\"attention_dropout\""
    ":0.0,\"auto_map\":{\"AutoConfig\":\"configuration_deepseek.DeepseekV3Config\",\"AutoModel\":"
    "\"modeling_deepseek.DeepseekV3Model\",\"AutoModelForCausalLM\":\"modeling_deepseek.Deepseek"
    "V3ForCausalLM\"},\"aux_loss_alpha\":0.001,\"bos_token_id\":0,\"eos_token_id\":1,\"ep_size\":1"
    ",\"first_k_dense_replace\":3,\"hidden_act\":\"silu\",\"hidden_size\":7168,\"initializer_ran"
    "ge\":0.02,\"intermediate_size\":18432,\"kv_lora_rank\":512,\"max_position_embeddings\":16384"
    "0,\"model_type\":\"deepseek_v3\",\"moe_intermediate_size\":2048,\"moe_layer_freq\":1,\"n_gro"
    "up\":8,\"n_routed_experts\":256,\"n_shared_experts\":1,\"norm_topk_prob\":true,\"num_attent"
    "ion_heads\":128,\"num_experts_per_tok\":8,\"num_hidden_layers\":61,\"num_key_value_heads\":1"
    "28,\"num_nextn_predict_layers\":1,\"pretraining_tp\":1,\"q_lora_rank\":1536,\"qk_nope_head_"
    "dim\":128,\"qk_rope_head_dim\":64,\"quantization_config\":{\"activation_scheme\":\"dynamic\""
    ",\"fmt\":\"e4m3\",\"quant_method\":\"fp8\",\"weight_block_size\":[128,128]},\"rms_norm_eps\""
    ":1e-06,\"rope_scaling\":{\"beta_fast\":32,\"beta_slow\":1,\"factor\":40,\"mscale\":1.0,\"msc"
    "ale_all_dim\":1.0,\"original_max_position_embeddings\":4096,\"type\":\"yarn\"},\"rope_theta\""
    ":10000,\"routed_scaling_factor\":2.5,\"scoring_func\":\"sigmoid\",\"seq_aux\":true,\"tie_wor"
    "d_embeddings\":false,\"topk_group\":4,\"topk_method\":\"noaux_tc\",\"torch_dtype\":\"bfloat16"
    "\",\"transformers_version\":\"4.33.1\",\"use_cache\":true,\"v_head_dim\":128,\"vocab_size\":1"
    "29280}";

/* From memory of the release's generation_config.json, not checked. */
static const char dsv3_generation[] =
    "{\"_from_model_config\":true,\"bos_token_id\":0,\"eos_token_id\":1,\"do_sample\":true,"
    "\"temperature\":0.6,\"top_p\":0.95,\"transformers_version\":\"4.46.3\"}";

typedef struct {
    const char *name;
    const char *repo;           /* "owner/name" on the hub */
    const char *revision;       /* NULL: not known (no --hf-cache) */
    const like_node *tree;
    int n_tensors, n_shards;
    uint64_t tensor_bytes;      /* the index's total_size */
    uint64_t max_shard;         /* the writer's max_shard_size */
    const uint64_t *sizes;      /* the release's shard sizes, or NULL */
    const char *const *oids;    /* their LFS ids (sha256), or NULL */
    const char *layers;         /* decoder layer prefix, "%d." follows */
    const char *globals[3];     /* embeddings, lm_head, final norm */
    const char *config, *generation;
    int omni_tokens;            /* the tokenizer gets omni_tokens */
    int tokenizer_json;         /* the release ships tokenizer.json */
    const char *shard_fmt;      /* printf of the shard names (index, count) */
    int fp8_block;              /* LK_FP8 nodes: block size (square) */
    st_dtype fp8_scale;         /* and their scale's dtype */
    const char *fp8_quant;      /* quantization_config to add to config, or NULL */
    const char *router;         /* with fp8_quant: the router module under a layer,
                                 * listed in modules_to_not_convert */
} like_preset;

#define QWEN_SHARDS "model-%05d-of-%05d.safetensors"

static const like_preset presets[] = {
    /* Revision 26291f793822fb6be9555850f06dfe95f2d7e695: 28,010 tensors,
     * 35,259,818,545 bf16 parameters, 15 shards cut at 5 GB; names and
     * shapes from a dump of the real checkpoint and the module tree of
     * Qwen3OmniMoeForConditionalGeneration, checked by the 15 sizes. It
     * ships vocab.json, merges.txt and tokenizer_config.json, no
     * tokenizer.json. */
    {"qwen3-omni-30b-a3b-instruct", "Qwen/Qwen3-Omni-30B-A3B-Instruct",
     "26291f793822fb6be9555850f06dfe95f2d7e695", omni_tree, 28010, 15, 70519637090ULL,
     5000000000ULL, omni_sizes, omni_oids, "thinker.model.layers.",
     {"thinker.model.embed_tokens.weight", "thinker.lm_head.weight",
      "thinker.model.norm.weight"},
     omni_config, omni_generation, 1, 0, QWEN_SHARDS, 0, ST_BF16, NULL, NULL},
    /* The text model: 48 layers x 128 experts, hidden 2048, moe
     * intermediate 768, 32 q / 4 kv heads of 128, vocab 151,936, bf16,
     * lm_head not tied: 18,867 tensors, 30,532,122,624 parameters as
     * computed from those facts (the "30.5B" of the model card). NOT checked against the release: the 16
     * shard files' sizes and split (here cut at 4 GB in registration
     * order, which gives 16), the revision and blob ids (so no --hf-cache),
     * the config and generation config (from memory). */
    {"qwen3-30b-a3b", "Qwen/Qwen3-30B-A3B", NULL, qwen3_tree, 18867, 16, 61064245248ULL,
     4000000000ULL, NULL, NULL, "model.layers.",
     {"model.embed_tokens.weight", "lm_head.weight", "model.norm.weight"},
     qwen3_config, qwen3_generation, 0, 1, QWEN_SHARDS, 0, ST_BF16, NULL, NULL},
    /* Qwen3-30B-A3B's tensors with the decoder layers' linear weights in
     * FP8 (128 x 128 blocks): 37,491 tensors, 31,170,895,872 bytes, both
     * computed from the bf16 model's facts. NOT checked against the
     * release: the scales' dtype (bf16, as Qwen's dense FP8 releases store
     * them; HabanaAI/vllm-fork#2141), the 8 shard files (here cut at 4 GB in
     * registration order), the config (qwen3-30b-a3b's plus the FP8
     * quantization_config) and generation config. */
    {"qwen3-30b-a3b-fp8", "Qwen/Qwen3-30B-A3B-FP8", NULL, qwen3_fp8_tree, 37491, 8,
     31170895872ULL, 4000000000ULL, NULL, NULL, "model.layers.",
     {"model.embed_tokens.weight", "lm_head.weight", "model.norm.weight"},
     qwen3_config, qwen3_generation, 0, 1, QWEN_SHARDS, 128, ST_BF16, qwen3_fp8_quant,
     "mlp.gate"},
    /* deepseek-ai/DeepSeek-V3 (and R1, V3-0324: the same tensors): 91,991
     * tensors, 688,574,839,360 bytes (671,026,419,200 parameters in the
     * main model, 13,463,426,304 in the MTP block), FP8 E4M3 in 128 x 128
     * blocks with F32 scales, eh_proj, routers, norms, embeddings and the
     * heads in bf16, e_score_correction_bias in F32; tensor count and byte
     * total agree with a published dump of the headers. 163 shards named
     * model-0000K-of-000163.safetensors (six digits after "of", as the
     * release names them). NOT known: which tensor is in which shard; here
     * they are cut at 4.25 GB in registration order (layers in order, the
     * MTP block last), which gives 163 files. The config and generation
     * config are from memory. */
    {"deepseek-v3", "deepseek-ai/DeepSeek-V3", NULL, dsv3_tree, 91991, 163,
     688574839360ULL, 4250000000ULL, NULL, NULL, "model.layers.",
     {"model.embed_tokens.weight", "lm_head.weight", "model.norm.weight"},
     dsv3_config, dsv3_generation, 0, 1, "model-%05d-of-%06d.safetensors", 128, ST_F32,
     NULL, NULL},
};

const char *like_names(void)
{
    return "qwen3-omni-30b-a3b-instruct, qwen3-30b-a3b, qwen3-30b-a3b-fp8, deepseek-v3";
}

static const like_preset *find_preset(const char *name)
{
    for (size_t i = 0; i < G_N_ELEMENTS(presets); i++)
        if (!strcmp(presets[i].name, name))
            return &presets[i];
    return NULL;
}

int like_known(const char *name)
{
    return find_preset(name) != NULL;
}

/* ---- the tensors ---- */

typedef struct {
    char *name;
    st_dtype dtype;
    int ndim;
    int64_t shape[ST_MAX_DIMS];
    uint64_t nbytes, offset; /* offset in the shard's data section */
    int shard;
} like_tensor;

static void add_tensor(GArray *out, const char *name, st_dtype dt, int ndim,
                       const int64_t *shape)
{
    like_tensor t = {0};
    t.name = g_strdup(name);
    t.dtype = dt;
    t.ndim = ndim;
    t.nbytes = st_dtype_bits(dt) / 8;
    for (int d = 0; d < ndim; d++) {
        t.shape[d] = shape[d];
        t.nbytes *= (uint64_t)shape[d];
    }
    g_array_append_val(out, t);
}

static void flatten(const like_preset *p, const like_node *n, GString *prefix, GArray *out)
{
    for (; n->name; n++) {
        gsize len = prefix->len;
        if (!n->kids) {
            g_string_append(prefix, n->name);
            if (n->kind == LK_FP8) {
                int64_t b = p->fp8_block;
                int64_t grid[2] = {(n->shape[0] + b - 1) / b, (n->shape[1] + b - 1) / b};
                add_tensor(out, prefix->str, ST_F8_E4M3, 2, n->shape);
                g_string_append(prefix, "_scale_inv");
                add_tensor(out, prefix->str, p->fp8_scale, 2, grid);
            } else {
                add_tensor(out, prefix->str, n->kind == LK_F32 ? ST_F32 : ST_BF16, n->ndim,
                           n->shape);
            }
        } else if (n->count == 0) {
            g_string_append(prefix, n->name);
            flatten(p, n->kids, prefix, out);
        } else {
            for (int i = n->first; i < n->first + n->count; i++) {
                g_string_append_printf(prefix, n->name, i);
                flatten(p, n->kids, prefix, out);
                g_string_truncate(prefix, len);
            }
        }
        g_string_truncate(prefix, len);
    }
}

static int by_name(const void *a, const void *b)
{
    return strcmp((*(like_tensor *const *)a)->name, (*(like_tensor *const *)b)->name);
}

/* safetensors' order in a shard: wider elements first, then by name */
static int by_width_name(const void *a, const void *b)
{
    const like_tensor *x = *(like_tensor *const *)a, *y = *(like_tensor *const *)b;
    unsigned bx = st_dtype_bits(x->dtype), by = st_dtype_bits(y->dtype);
    if (bx != by)
        return bx > by ? -1 : 1;
    return strcmp(x->name, y->name);
}

/* ---- JSON text as Python's json.dumps(indent=2) lays it out ---- */

/* Indents compact JSON text (no whitespace outside strings): a newline and
 * two spaces per level after every '{', '[' and ',', ": " after a key; "{}"
 * and "[]" stay as they are. The values' text is kept, so 0.0 stays 0.0
 * (a cJSON round trip would print 0). */
static void put_json_text(GString *s, const char *j)
{
    int depth = 0, in_str = 0;
    for (const char *p = j; *p; p++) {
        char c = *p;
        if (in_str) {
            g_string_append_c(s, c);
            if (c == '\\' && p[1])
                g_string_append_c(s, *++p);
            else if (c == '"')
                in_str = 0;
            continue;
        }
        if (c == '"') {
            in_str = 1;
            g_string_append_c(s, c);
        } else if ((c == '{' || c == '[') && p[1] != (c == '{' ? '}' : ']')) {
            g_string_append_c(s, c);
            g_string_append_c(s, '\n');
            depth++;
            for (int i = 0; i < depth; i++)
                g_string_append(s, "  ");
        } else if ((c == '{' || c == '[')) {
            g_string_append_c(s, c);
            g_string_append_c(s, *++p);
        } else if (c == '}' || c == ']') {
            g_string_append_c(s, '\n');
            depth--;
            for (int i = 0; i < depth; i++)
                g_string_append(s, "  ");
            g_string_append_c(s, c);
        } else if (c == ',') {
            g_string_append(s, ",\n");
            for (int i = 0; i < depth; i++)
                g_string_append(s, "  ");
        } else if (c == ':') {
            g_string_append(s, ": ");
        } else {
            g_string_append_c(s, c);
        }
    }
    g_string_append_c(s, '\n');
}

/* ---- files ---- */

typedef struct {
    char *name;
    char blob[65]; /* its name in a hub cache's blobs/ */
} like_file;

typedef struct {
    const char *dir; /* where the files go */
    GArray *files;   /* like_file, for the hub cache's links */
} like_out;

/* The id the hub gives a file that is not in LFS: its git blob id. */
static void git_blob_id(const void *data, size_t len, char *hex)
{
    uint8_t md[EVP_MAX_MD_SIZE];
    unsigned mdlen = 0;
    char head[32];
    int hl = snprintf(head, sizeof head, "blob %zu", len) + 1; /* with the NUL */
    EVP_MD_CTX *c = EVP_MD_CTX_new();
    EVP_DigestInit_ex(c, EVP_sha1(), NULL);
    EVP_DigestUpdate(c, head, (size_t)hl);
    EVP_DigestUpdate(c, data, len);
    EVP_DigestFinal_ex(c, md, &mdlen);
    EVP_MD_CTX_free(c);
    qm_hex(md, mdlen, hex);
}

static int put_file(like_out *o, const char *name, const GString *s, GError **err)
{
    char *path = g_build_filename(o->dir, name, NULL);
    int rc = fs_write_atomic(path, s->str, s->len, err);
    g_free(path);
    if (rc == 0) {
        like_file f = {g_strdup(name), ""};
        git_blob_id(s->str, s->len, f.blob);
        g_array_append_val(o->files, f);
    }
    return rc;
}

static int put_json(like_out *o, const char *name, const char *compact, GError **err)
{
    GString *s = g_string_new(NULL);
    put_json_text(s, compact);
    int rc = put_file(o, name, s, err);
    g_string_free(s, TRUE);
    return rc;
}

/* The preset's config.json, compact: with fp8_quant, its
 * quantization_config (plus modules_to_not_convert: lm_head and each
 * layer's router) goes in before "rms_norm_eps", where sorted keys put it. */
static GString *like_config(const like_preset *p, int n_layers)
{
    GString *s = g_string_new(p->config);
    if (!p->fp8_quant)
        return s;
    GString *q = g_string_new(p->fp8_quant);
    g_string_truncate(q, q->len - 1); /* the closing brace */
    g_string_append(q, ",\"modules_to_not_convert\":[\"lm_head\"");
    for (int l = 0; l < n_layers; l++)
        g_string_append_printf(q, ",\"%s%d.%s\"", p->layers, l, p->router);
    g_string_append(q, "]},");
    const char *at = strstr(s->str, "\"rms_norm_eps\"");
    g_string_prepend(q, "\"quantization_config\":");
    g_string_insert(s, at ? at - s->str : 1, q->str);
    g_string_free(q, TRUE);
    return s;
}

static int put_index(like_out *o, GArray *ts, const char *const *shard_names,
                     uint64_t total, GError **err)
{
    like_tensor **by = g_new(like_tensor *, ts->len);
    for (guint i = 0; i < ts->len; i++)
        by[i] = &g_array_index(ts, like_tensor, i);
    qsort(by, ts->len, sizeof *by, by_name);
    /* by hand: Hugging Face's layout, which cJSON does not print */
    GString *s = g_string_sized_new(ts->len * 96);
    g_string_append_printf(s, "{\n  \"metadata\": {\n    \"total_size\": %" G_GUINT64_FORMAT
                              "\n  },\n  \"weight_map\": {", total);
    for (guint i = 0; i < ts->len; i++) {
        g_string_append(s, i ? ",\n    " : "\n    ");
        qm_json_put_str(s, by[i]->name);
        g_string_append(s, ": ");
        qm_json_put_str(s, shard_names[by[i]->shard]);
    }
    g_string_append(s, "\n  }\n}\n");
    g_free(by);
    int rc = put_file(o, "model.safetensors.index.json", s, err);
    g_string_free(s, TRUE);
    return rc;
}

/* ---- the tokenizer: the real Qwen3 one, from --tokenizer DIR ---- */

static GString *read_maybe_gz(const char *path, GError **err)
{
    gzFile z = gzopen(path, "rb"); /* reads plain files as they are */
    if (!z) {
        qm_set_errno(err, errno ? errno : ENOMEM, "cannot open", path);
        return NULL;
    }
    GString *s = g_string_new(NULL);
    char buf[1 << 16];
    int n;
    while ((n = gzread(z, buf, sizeof buf)) > 0)
        g_string_append_len(s, buf, n);
    int zerr = 0;
    const char *msg = n < 0 ? gzerror(z, &zerr) : NULL;
    if (n < 0)
        g_set_error(err, QM_ERROR, QM_ERR_FORMAT, "'%s': %s", path, msg);
    gzclose(z);
    if (n < 0) {
        g_string_free(s, TRUE);
        return NULL;
    }
    return s;
}

static cJSON *parse_named(const GString *s, const char *path, GError **err)
{
    const char *end = NULL;
    cJSON *j = cJSON_ParseWithLengthOpts(s->str, s->len, &end, 0);
    if (!j || !cJSON_IsObject(j)) {
        cJSON_Delete(j);
        g_set_error(err, QM_ERROR, QM_ERR_FORMAT, "'%s': not a JSON object", path);
    }
    return cJSON_IsObject(j) ? j : NULL;
}

static int put_tokenizer(like_out *o, const like_preset *p, const char *dir, GError **err)
{
    char *tpath = g_build_filename(dir, "tokenizer.json.gz", NULL);
    if (!g_file_test(tpath, G_FILE_TEST_EXISTS)) {
        g_free(tpath);
        tpath = g_build_filename(dir, "tokenizer.json", NULL);
    }
    char *cpath = g_build_filename(dir, "tokenizer_config.json", NULL);
    cJSON *tj = NULL, *tc = NULL;
    GString *ts = read_maybe_gz(tpath, err), *cs = NULL, *s = NULL;
    int rc = -1;
    if (!ts || !(tj = parse_named(ts, tpath, err)))
        goto out;
    if (!(cs = read_maybe_gz(cpath, err)) || !(tc = parse_named(cs, cpath, err)))
        goto out;
    cJSON *model = cJSON_GetObjectItemCaseSensitive(tj, "model");
    cJSON *vocab = cJSON_GetObjectItemCaseSensitive(model, "vocab");
    cJSON *merges = cJSON_GetObjectItemCaseSensitive(model, "merges");
    cJSON *dec = cJSON_GetObjectItemCaseSensitive(tc, "added_tokens_decoder");
    if (!cJSON_IsObject(vocab) || !cJSON_IsArray(merges) || !cJSON_IsObject(dec)) {
        g_set_error(err, QM_ERROR, QM_ERR_FORMAT,
                    "'%s' has no model.vocab and model.merges, or '%s' no "
                    "added_tokens_decoder: not a BPE tokenizer", tpath, cpath);
        goto out;
    }
    if (p->omni_tokens) {
        for (size_t i = 0; i < G_N_ELEMENTS(omni_tokens); i++) {
            cJSON *t = cJSON_CreateObject();
            cJSON_AddStringToObject(t, "content", omni_tokens[i].content);
            cJSON_AddFalseToObject(t, "lstrip");
            cJSON_AddFalseToObject(t, "normalized");
            cJSON_AddFalseToObject(t, "rstrip");
            cJSON_AddFalseToObject(t, "single_word");
            cJSON_AddTrueToObject(t, "special");
            char id[16];
            snprintf(id, sizeof id, "%d", omni_tokens[i].id);
            cJSON_DeleteItemFromObjectCaseSensitive(dec, id);
            cJSON_AddItemToObject(dec, id, t);
        }
        cJSON *sp = cJSON_GetObjectItemCaseSensitive(tc, "additional_special_tokens");
        if (!cJSON_IsArray(sp)) {
            cJSON_DeleteItemFromObjectCaseSensitive(tc, "additional_special_tokens");
            sp = cJSON_AddArrayToObject(tc, "additional_special_tokens");
        }
        for (size_t i = 0; i < G_N_ELEMENTS(omni_special); i++)
            cJSON_AddItemToArray(sp, cJSON_CreateString(omni_special[i]));
    }
    char *text = cJSON_PrintUnformatted(tc);
    s = g_string_new(NULL);
    put_json_text(s, text);
    cJSON_free(text);
    if (put_file(o, "tokenizer_config.json", s, err))
        goto out;
    text = cJSON_PrintUnformatted(vocab);
    g_string_assign(s, text);
    g_string_append_c(s, '\n');
    cJSON_free(text);
    if (put_file(o, "vocab.json", s, err))
        goto out;
    g_string_assign(s, "#version: 0.2\n");
    const cJSON *m;
    cJSON_ArrayForEach(m, merges) {
        /* "a b" strings or ["a","b"] pairs, by the tokenizers version */
        const cJSON *l = cJSON_GetArrayItem(m, 0), *r = cJSON_GetArrayItem(m, 1);
        if (cJSON_IsString(m))
            g_string_append(s, m->valuestring);
        else if (cJSON_IsString(l) && cJSON_IsString(r))
            g_string_append_printf(s, "%s %s", l->valuestring, r->valuestring);
        else {
            g_set_error(err, QM_ERROR, QM_ERR_FORMAT, "'%s': a merge is neither \"a b\" "
                        "nor [\"a\", \"b\"]", tpath);
            goto out;
        }
        g_string_append_c(s, '\n');
    }
    if (put_file(o, "merges.txt", s, err))
        goto out;
    rc = p->tokenizer_json ? put_file(o, "tokenizer.json", ts, err) : 0;
out:
    if (s)
        g_string_free(s, TRUE);
    if (ts)
        g_string_free(ts, TRUE);
    if (cs)
        g_string_free(cs, TRUE);
    cJSON_Delete(tj);
    cJSON_Delete(tc);
    g_free(tpath);
    g_free(cpath);
    return rc;
}

/* ---- data patterns ---- */

static uint64_t splitmix64(uint64_t *s)
{
    uint64_t z = (*s += 0x9E3779B97F4A7C15ULL);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ULL;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBULL;
    return z ^ (z >> 31);
}

/* A deterministic pattern drawn from the tensor's name: bf16 weights of
 * either sign with |x| about 0.002-0.03 (exponents 0x76-0x79), 1.0-1.12 in
 * 1-D norm weights; FP8 codes of either sign with |x| 0.5-3.75 (never the
 * NaN codes); FP8 scales (F32 or BF16) and F32 biases 1.2e-4-2.4e-4. */
static int fill_tensor(int fd, const like_tensor *t, uint64_t at, const char *path,
                       GError **err)
{
    uint64_t s = 0xcbf29ce484222325ULL; /* FNV-1a of the name */
    for (const unsigned char *c = (const unsigned char *)t->name; *c; c++)
        s = (s ^ *c) * 0x100000001b3ULL;
    int norm = t->ndim == 1 && strstr(t->name, "norm");
    static const uint8_t hi[4] = {0x3B, 0x3C, 0xBB, 0xBC};
    enum { CHUNK = 4 << 20 };
    uint8_t *buf = g_malloc(CHUNK);
    int rc = 0;
    for (uint64_t done = 0; done < t->nbytes && !rc;) {
        size_t n = (size_t)MIN((uint64_t)CHUNK, t->nbytes - done);
        for (size_t i = 0; i < n; i += 8) {
            uint64_t r = splitmix64(&s);
            if (t->dtype == ST_F8_E4M3) {
                for (size_t k = i; k < i + 8 && k < n; k++, r >>= 8)
                    buf[k] = (uint8_t)((r & 0x80) | (0x30 + (r & 0x1F)));
            } else if (t->dtype == ST_F32) {
                for (size_t k = i; k < i + 8 && k < n; k += 4, r >>= 32) {
                    buf[k] = (uint8_t)r;
                    buf[k + 1] = (uint8_t)(r >> 8);
                    buf[k + 2] = (uint8_t)(0x00 | ((r >> 16) & 0x7F));
                    buf[k + 3] = 0x39;
                }
            } else {
                int scale = g_str_has_suffix(t->name, "_scale_inv");
                for (size_t k = i; k < i + 8 && k < n; k += 2, r >>= 16) {
                    buf[k] = norm ? (uint8_t)(0x80 | (r & 0x0F))
                             : scale ? (uint8_t)(r & 0x7F) : (uint8_t)(r >> 2);
                    buf[k + 1] = norm ? 0x3F : scale ? 0x39 : hi[r & 3];
                }
            }
        }
        for (size_t w = 0; w < n;) {
            ssize_t k = pwrite(fd, buf + w, n - w, (off_t)(at + done + w));
            if (k < 0 && errno == EINTR)
                continue;
            if (k <= 0) {
                rc = qm_set_errno(err, k < 0 ? errno : ENOSPC, "cannot write", path);
                break;
            }
            w += (size_t)k;
        }
        done += n;
    }
    g_free(buf);
    return rc;
}

typedef struct {
    const like_preset *p;
    uint8_t *layers; /* --fill-layers mask, or NULL */
    int n_layers, routers, globals;
} fill_sel;

static int wants_fill(const fill_sel *f, const char *name)
{
    for (int i = 0; i < 3; i++)
        if (f->globals && !strcmp(name, f->p->globals[i]))
            return 1;
    if (!g_str_has_prefix(name, f->p->layers))
        return 0;
    const char *rest = name + strlen(f->p->layers);
    int l = (int)strtol(rest, NULL, 10);
    if (f->layers && l >= 0 && l < f->n_layers && f->layers[l])
        return 1;
    return f->routers && (g_str_has_suffix(name, "mlp.gate.weight") ||
                          strstr(name, "layernorm") || g_str_has_suffix(name, "_norm.weight"));
}

static int write_shard(const char *path, like_tensor **ts, int n, const fill_sel *f,
                       uint64_t *size, uint64_t *filled, GError **err)
{
    qsort(ts, (size_t)n, sizeof *ts, by_width_name);
    st_entry *e = g_new0(st_entry, n);
    uint64_t at = 0;
    for (int i = 0; i < n; i++) {
        e[i].name = ts[i]->name;
        e[i].dtype = ts[i]->dtype;
        e[i].ndim = ts[i]->ndim;
        memcpy(e[i].shape, ts[i]->shape, sizeof e[i].shape);
        e[i].nbytes = ts[i]->nbytes;
        ts[i]->offset = at;
        at += ts[i]->nbytes;
    }
    GByteArray *h = st_header_build(e, n, NULL, 0, 0, err);
    g_free(e);
    if (!h)
        return -1;
    uint64_t base = h->len;
    fs_out *out = fs_out_open(path, err);
    int rc = out ? fs_out_write(out, h->data, h->len, err) : -1;
    g_byte_array_free(h, TRUE);
    for (int i = 0; i < n && !rc; i++)
        if (wants_fill(f, ts[i]->name)) {
            rc = fill_tensor(out->fd, ts[i], base + ts[i]->offset, path, err);
            *filled += ts[i]->nbytes;
        }
    if (!rc && ftruncate(out->fd, (off_t)(base + at)) != 0) /* the holes */
        rc = qm_set_errno(err, errno, "cannot extend", path);
    if (rc) {
        fs_out_abort(out);
        return -1;
    }
    *size = base + at;
    return fs_out_commit(out, err);
}

/* ---- the hub cache ---- */

/* OUT/models--OWNER--NAME/{blobs/ID, refs/main, snapshots/REV/FILE ->
 * ../../blobs/ID}: small files by their git blob id, shards by the
 * release's LFS id (the replica's bytes differ; the cache does not check). */
static int hub_cache_links(const char *repo_dir, const char *stage, const like_preset *p,
                           GArray *files, GError **err)
{
    char *snap = g_build_filename(repo_dir, "snapshots", p->revision, NULL);
    char *refs = g_build_filename(repo_dir, "refs", NULL);
    char *blobs = g_build_filename(repo_dir, "blobs", NULL);
    char *main_ref = g_build_filename(refs, "main", NULL);
    int rc = fs_mkdir_p(snap, err) || fs_mkdir_p(refs, err) || fs_mkdir_p(blobs, err) ||
             fs_write_atomic(main_ref, p->revision, strlen(p->revision), err) ? -1 : 0;
    for (guint i = 0; i < files->len && !rc; i++) {
        const like_file *f = &g_array_index(files, like_file, i);
        char *from = g_build_filename(stage, f->name, NULL);
        char *blob = g_build_filename(blobs, f->blob, NULL);
        char *link = g_build_filename(snap, f->name, NULL);
        char *target = g_build_filename("..", "..", "blobs", f->blob, NULL);
        if (rename(from, blob) != 0)
            rc = qm_set_errno(err, errno, "cannot move into blobs/", from);
        else if (symlink(target, link) != 0)
            rc = qm_set_errno(err, errno, "cannot make the link", link);
        g_free(from);
        g_free(blob);
        g_free(link);
        g_free(target);
    }
    if (!rc && rmdir(stage) != 0)
        rc = qm_set_errno(err, errno, "cannot remove", stage);
    g_free(snap);
    g_free(refs);
    g_free(blobs);
    g_free(main_ref);
    return rc;
}

/* ---- the whole replica ---- */

int like_write(const char *out, const char *name, const like_opts *o, like_stats *st,
               GError **err)
{
    const like_preset *p = find_preset(name);
    memset(st, 0, sizeof *st);
    if (!p) {
        g_set_error(err, QM_ERROR, QM_ERR_USAGE, "unknown --like '%s' (known: %s)", name,
                    like_names());
        return -1;
    }
    if (o->hf_cache && !p->revision) {
        g_set_error(err, QM_ERROR, QM_ERR_USAGE, "--hf-cache needs the release's revision "
                    "and blob ids, which the %s preset does not know", p->name);
        return -1;
    }
    GArray *ts = g_array_new(FALSE, TRUE, sizeof(like_tensor));
    GString *prefix = g_string_new(NULL);
    flatten(p, p->tree, prefix, ts);
    g_string_free(prefix, TRUE);

    fill_sel f = {p, NULL, 0, o->fill_routers, o->fill_globals};
    for (const like_tensor *t = (like_tensor *)ts->data; t < (like_tensor *)ts->data + ts->len; t++)
        if (g_str_has_prefix(t->name, p->layers))
            f.n_layers = MAX(f.n_layers, atoi(t->name + strlen(p->layers)) + 1);
    char *repo_dir = NULL, *stage = NULL;
    like_out lo = {out, g_array_new(FALSE, TRUE, sizeof(like_file))};
    char **names = NULL;
    int rc = 0, n_shards = 0;
    if (o->fill_layers) {
        f.layers = g_malloc0((gsize)f.n_layers);
        rc = qm_list_parse(o->fill_layers, f.n_layers, f.layers, "--fill-layers", err);
        if (rc && *err)
            (*err)->code = QM_ERR_USAGE;
    }

    /* the split, checked against what the preset knows of the release */
    uint64_t total = 0, cur = 0;
    for (guint i = 0; i < ts->len && !rc; i++) {
        like_tensor *t = &g_array_index(ts, like_tensor, i);
        if (cur > 0 && cur + t->nbytes > p->max_shard) {
            n_shards++;
            cur = 0;
        }
        t->shard = n_shards;
        cur += t->nbytes;
        total += t->nbytes;
    }
    n_shards++;
    if (!rc && ((int)ts->len != p->n_tensors || n_shards != p->n_shards ||
                total != p->tensor_bytes)) {
        g_set_error(err, QM_ERROR, QM_ERR_FORMAT, "the %s tables give %u tensors, %d "
                    "shards, %" G_GUINT64_FORMAT " bytes; the release has %d, %d, %"
                    G_GUINT64_FORMAT " (a bug in mksample_like.c)", p->name, ts->len,
                    n_shards, total, p->n_tensors, p->n_shards, p->tensor_bytes);
        rc = -1;
    }
    if (!rc && o->hf_cache) {
        GString *d = g_string_new("models--"); /* "models--OWNER--NAME" */
        for (const char *c = p->repo; *c; c++)
            if (*c == '/')
                g_string_append(d, "--");
            else
                g_string_append_c(d, *c);
        repo_dir = g_build_filename(out, d->str, NULL);
        g_string_free(d, TRUE);
        stage = g_build_filename(repo_dir, ".staging", NULL);
        lo.dir = stage;
        rc = fs_mkdir_p(stage, err);
    }
    if (!rc) {
        GString *cfg = like_config(p, f.n_layers);
        rc = put_json(&lo, "config.json", cfg->str, err);
        g_string_free(cfg, TRUE);
    }
    if (!rc)
        rc = put_json(&lo, "generation_config.json", p->generation, err);
    names = g_new0(char *, n_shards + 1);
    for (int k = 0; k < n_shards; k++)
        names[k] = g_strdup_printf(p->shard_fmt, k + 1, n_shards);
    if (!rc)
        rc = put_index(&lo, ts, (const char *const *)names, total, err);
    if (!rc && o->tokenizer)
        rc = put_tokenizer(&lo, p, o->tokenizer, err);

    like_tensor **sh = g_new(like_tensor *, ts->len);
    for (int k = 0, i = 0; k < n_shards && !rc; k++) {
        int n = 0;
        for (; i < (int)ts->len && g_array_index(ts, like_tensor, i).shard == k; i++)
            sh[n++] = &g_array_index(ts, like_tensor, i);
        char *path = g_build_filename(lo.dir, names[k], NULL);
        uint64_t size = 0;
        rc = write_shard(path, sh, n, &f, &size, &st->filled_bytes, err);
        if (!rc && p->sizes && size != p->sizes[k]) {
            g_set_error(err, QM_ERROR, QM_ERR_FORMAT, "'%s': %" G_GUINT64_FORMAT " bytes, "
                        "the release's is %" G_GUINT64_FORMAT " (a bug in mksample_like.c)",
                        path, size, p->sizes[k]);
            rc = -1;
        }
        if (!rc && o->hf_cache) {
            like_file lf = {g_strdup(names[k]), ""};
            g_strlcpy(lf.blob, p->oids[k], sizeof lf.blob);
            g_array_append_val(lo.files, lf);
        }
        st->logical_bytes += size;
        g_free(path);
    }
    g_free(sh);
    if (!rc && o->hf_cache)
        rc = hub_cache_links(repo_dir, stage, p, lo.files, err);
    if (!rc) {
        st->tensors = (int)ts->len;
        st->shards = n_shards;
        st->where = o->hf_cache ? g_build_filename(repo_dir, "snapshots", p->revision, NULL)
                                : g_strdup(out);
    }
    g_strfreev(names);
    for (guint i = 0; i < lo.files->len; i++)
        g_free(g_array_index(lo.files, like_file, i).name);
    g_array_free(lo.files, TRUE);
    for (guint i = 0; i < ts->len; i++)
        g_free(g_array_index(ts, like_tensor, i).name);
    g_array_free(ts, TRUE);
    g_free(f.layers);
    g_free(repo_dir);
    g_free(stage);
    return rc;
}
