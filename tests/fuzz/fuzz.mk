# tests/fuzz/fuzz.mk - fuzzing and memory checking (included by the Makefile).
#
#   make fuzz [FUZZ_SECONDS=60] [FUZZ_TARGETS="safetensors manifest"]
#       builds the libFuzzer targets tests/fuzz/fuzz_*.c with clang
#       (-fsanitize=fuzzer,address,undefined) into build-fuzz/ and runs each
#       for FUZZ_SECONDS on its seed corpus tests/fuzz/corpus/NAME/; new
#       inputs go to build-fuzz/corpus/NAME/, crashes to build-fuzz/crash-NAME-*.
#   make fuzz-regress
#       runs every target once over its seeds and over the catalogue inputs
#       (no fuzzing): a quick check that old findings stay fixed.
#   make valgrind
#       valgrind memcheck of extraction, verification and a short generation
#       on the fixture (tests/valgrind.sh), built into build-fuzz/valgrind/
#       without -march=native; fails on any error or definite leak.
#   make torture
#       the long kill torture (tests/torture_long.sh): 20 SIGKILLs and 20
#       SIGTERMs at random moments, resuming each time.

FUZZ_CC      ?= clang
FUZZ_BUILD   := build-fuzz
FUZZ_SECONDS ?= 60
FUZZ_JOBS    ?= 1
FUZZ_SAN     := -fsanitize=address,undefined -fno-sanitize-recover=undefined \
                -fno-omit-frame-pointer
# -Wno-psabi: without -march=native clang warns that matvec.c's 64-byte
# vector helpers would pass differently with AVX-512; they are static inline,
# so no such value crosses a call boundary.
FUZZ_CFLAGS  := -std=c11 -D_GNU_SOURCE -g -O1 -pthread $(FUZZ_SAN) $(PKG_CFLAGS) -Icommon -Wno-psabi \
                -DFUZZ_MODEL='"$(abspath tests/fixtures/qwen3moe-tiny/qwen3moe)"' \
                -DFUZZ_TOKENIZER='"$(abspath tests/fixtures/qwen3-tokenizer/tiny/tokenizer.json)"'
FUZZ_SRC     := $(sort $(wildcard tests/fuzz/fuzz_*.c))
FUZZ_NAMES   := $(FUZZ_SRC:tests/fuzz/fuzz_%.c=%)
FUZZ_TARGETS ?= $(FUZZ_NAMES)
FUZZ_BINS    := $(FUZZ_NAMES:%=$(FUZZ_BUILD)/fuzz_%)
FUZZ_LIB_OBJ := $(LIB_SRC:%.c=$(FUZZ_BUILD)/%.o)

.PHONY: fuzz fuzz-build fuzz-regress valgrind torture

$(FUZZ_BUILD)/common/%.o: common/%.c $(HEADERS)
	@mkdir -p $(dir $@)
	@echo "CC(fuzz) $<"
	@$(FUZZ_CC) $(FUZZ_CFLAGS) -fsanitize=fuzzer-no-link $(WARN) -c -o $@ $<

$(FUZZ_BUILD)/libqmoe.a: $(FUZZ_LIB_OBJ)
	@rm -f $@
	@ar rcs $@ $^

$(FUZZ_BUILD)/fuzz_%: tests/fuzz/fuzz_%.c $(FUZZ_BUILD)/libqmoe.a
	@echo "LD(fuzz) $@"
	@$(FUZZ_CC) $(FUZZ_CFLAGS) -fsanitize=fuzzer $(WARN) -o $@ $< \
	    $(FUZZ_BUILD)/libqmoe.a $(PKG_LIBS) -lm -pthread

fuzz-build: $(FUZZ_BINS)

# -rss_limit_mb: the loaders may allocate what a file asks for up to the
# format's bounds (a 100 MB header), no more.
fuzz: fuzz-build
	@set -e; for t in $(FUZZ_TARGETS); do \
	    mkdir -p $(FUZZ_BUILD)/corpus/$$t; \
	    echo "== fuzz_$$t for $(FUZZ_SECONDS) s"; \
	    $(FUZZ_BUILD)/fuzz_$$t -max_total_time=$(FUZZ_SECONDS) -rss_limit_mb=2048 \
	        -timeout=10 -print_final_stats=1 $(if $(filter-out 1,$(FUZZ_JOBS)),-jobs=$(FUZZ_JOBS) -workers=$(FUZZ_JOBS)) \
	        -artifact_prefix=$(FUZZ_BUILD)/crash-$$t- \
	        $(FUZZ_BUILD)/corpus/$$t tests/fuzz/corpus/$$t 2>&1 \
	        | tee $(FUZZ_BUILD)/fuzz_$$t.log | grep -E '^#[0-9]+[[:space:]]+(INITED|DONE)|^stat::|ERROR|SUMMARY' ; \
	    if grep -q 'ERROR: \|SUMMARY: ' $(FUZZ_BUILD)/fuzz_$$t.log; then \
	        echo "fuzz_$$t found a problem: see $(FUZZ_BUILD)/fuzz_$$t.log"; exit 1; fi; \
	done

fuzz-regress: fuzz-build
	@set -e; for t in $(FUZZ_NAMES); do \
	    echo "== fuzz_$$t over its seeds"; \
	    $(FUZZ_BUILD)/fuzz_$$t -runs=0 tests/fuzz/corpus/$$t 2>&1 | tail -n 1; \
	done

# A build of its own without -march=native: valgrind does not know every
# instruction the host CPU has (AVX-512).
VG_BUILD := $(FUZZ_BUILD)/valgrind
valgrind:
	@$(MAKE) --no-print-directory BUILD=$(VG_BUILD) OPT=-O1 SAN=0 all
	@QMOE_BUILD=$(abspath $(VG_BUILD)) bash tests/valgrind.sh

torture: all
	@QMOE_BUILD=$(abspath $(BUILD)) bash tests/torture_long.sh
