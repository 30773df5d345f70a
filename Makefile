# qmoe - build, test, install.
#
#   make              build libqmoe.a and every tool into build/ (build-san/ with SAN=1)
#   make check        run all tests; ends with "N passed, N failed"
#                     (TESTS=substr runs a subset; see HACKING.md)
#   make check SAN=1  the same under AddressSanitizer + UBSan
#   make DEBUG=1      -O0 -g3 build into build-debug/ (for gdb)
#   make compile_commands.json   for clangd and other editors' tools
#   make demo         sample checkpoint -> background extraction -> status -> verify -> run
#   make bench        benchmarks (ratios against cp, sha256sum, memcpy; an older
#                     qmoe-run and llama.cpp with QMOE_RUN_BASE=, LLAMA_CPP_DIR=)
#   make install PREFIX=/usr/local

PKGS     := glib-2.0 libcjson libcrypto zlib
PREFIX   ?= /usr/local
CC       ?= cc
OPT      ?= -O2 -march=native
WARN     := -Wall -Wextra -Wshadow -Wvla -Wstrict-prototypes -Wmissing-prototypes \
            -Wformat=2 -Wno-format-nonliteral -Werror
PKG_CFLAGS := $(shell pkg-config --cflags $(PKGS))
PKG_LIBS   := $(shell pkg-config --libs $(PKGS))

ifeq ($(SAN),1)
BUILD    ?= build-san
SANFLAGS := -fsanitize=address,undefined -fno-sanitize-recover=undefined -fno-omit-frame-pointer
OPT      := -O1 -march=native
else ifeq ($(DEBUG),1)
BUILD    ?= build-debug
SANFLAGS :=
OPT      := -O0 -g3 -march=native -fno-omit-frame-pointer
else
BUILD    ?= build
SANFLAGS :=
endif

CFLAGS   += -std=c11 -D_GNU_SOURCE -g -pthread $(OPT) $(SANFLAGS) $(PKG_CFLAGS) -Icommon
LDLIBS   += $(PKG_LIBS) -lm -pthread
LDFLAGS  += $(SANFLAGS)

# libqmoe: one folder per subsystem (see common/README.md). common/cli/ is
# linked into the tools only; it is not part of the installed library.
LIB_DIRS := base format outdir model
LIB_SRC  := $(sort $(foreach d,$(LIB_DIRS),$(wildcard common/$(d)/*.c)))
LIB_OBJ  := $(LIB_SRC:%.c=$(BUILD)/%.o)
LIB      := $(BUILD)/libqmoe.a
CLI_SRC  := $(sort $(wildcard common/cli/*.c))
CLI_OBJ  := $(CLI_SRC:%.c=$(BUILD)/%.o)
CLI_LIB  := $(BUILD)/libqmoe-cli.a
HEADERS  := $(wildcard common/*/*.h) $(wildcard */*.h)
# Header dependencies come from the compiler (-MMD -MP: BUILD/x.d beside
# BUILD/x.o lists the headers x.c includes), so touching one header
# rebuilds only what includes it. An object without its .d (a build made
# before this rule) is rebuilt once: the empty rule makes a missing .d a
# prerequisite that is always out of date.
DEPFLAGS  = -MMD -MP -MF $(@:.o=.d)

# Every TOOLDIR/qmoe-NAME.c is a program; TOOLDIR/NAME_*.c are its own
# helper files, linked into that program only.
TOOLDIRS := extract verify monitor samples
MAINS    := $(sort $(foreach d,$(TOOLDIRS),$(wildcard $(d)/qmoe-*.c)))
BINS     := $(foreach m,$(MAINS),$(BUILD)/bin/$(basename $(notdir $(m))))
tool_name = $(patsubst qmoe-%,%,$(basename $(notdir $(1))))
tool_helpers = $(wildcard $(dir $(1))$(call tool_name,$(1))_*.c)

TEST_SRC := $(sort $(wildcard tests/unit/test_*.c))
TEST_BIN := $(TEST_SRC:tests/unit/%.c=$(BUILD)/tests/%)
# Helper programs used by the shell tests (not run on their own).
TOOL_SRC := $(sort $(wildcard tests/tools/*.c))
TOOL_BIN := $(TOOL_SRC:tests/tools/%.c=$(BUILD)/tests/tools/%)

# Man pages: generated from each tool's --help and --version by help2man,
# with the NAME and SEE ALSO of TOOLDIR/qmoe-NAME.h2m.
MANS     := $(BINS:$(BUILD)/bin/%=$(BUILD)/man/%.1)
# What a program using libqmoe includes (-I$(includedir)/qmoe, then
# "model/model.h"): the error domain, the formats, the extracted directory,
# the model. base/util.h, base/fs.h and model/model_impl.h (the forward
# pass's weights and run state) are internal; cli/ is not installed.
PUBLIC_HEADERS := common/base/error.h $(filter-out common/model/model_impl.h,\
                  $(foreach d,format outdir model,$(wildcard common/$(d)/*.h)))

.PHONY: all check demo bench install clean torture fuzz valgrind man compile_commands.json
# The kernel test (tests/unit/kernels.c) with matvec.c compiled in three
# times: for the build's -march, without AVX-512, and portable (no AVX2, no
# FMA), so that make check runs every path of the products on a machine
# that has them all (tests/cli/kernels.sh).
KERNEL_VARIANTS := native avx2 portable
KERNEL_BIN := $(KERNEL_VARIANTS:%=$(BUILD)/tests/kernels/%)
KFLAGS_native :=
KFLAGS_avx2 := -mno-avx512f
KFLAGS_portable := -mno-avx512f -mno-avx2 -mno-fma

all: $(LIB) $(CLI_LIB) $(BINS) $(TEST_BIN) $(TOOL_BIN) $(KERNEL_BIN)

$(BUILD)/%.o: %.c $(BUILD)/%.d
	@mkdir -p $(dir $@)
	@echo "CC $<"
	@$(CC) $(CFLAGS) $(WARN) $(DEPFLAGS) -c -o $@ $<
ALL_SRC  := $(LIB_SRC) $(CLI_SRC) $(foreach d,$(TOOLDIRS),$(wildcard $(d)/*.c)) $(TEST_SRC) $(TOOL_SRC)
DEPFILES := $(ALL_SRC:%.c=$(BUILD)/%.d)
$(DEPFILES):
include $(wildcard $(DEPFILES))

# One entry per C file of the project, with the flags of this build.
compile_commands.json:
	@{ echo "["; sep=""; \
	  for f in $(ALL_SRC); do \
	    printf '%s{"directory":"%s","file":"%s","command":"%s %s -c -o %s %s"}\n' "$$sep" \
	      "$(CURDIR)" "$$f" "$(CC)" "$(CFLAGS) $(WARN)" "$(BUILD)/$${f%.c}.o" "$$f"; sep=","; \
	  done; echo "]"; } >$@.tmp && mv $@.tmp $@
	@echo "compile_commands.json: $$(grep -c '"file"' $@) files"

# The matrix products contract a*b+c into FMA (-std=c11 turns contraction
# off): prefill 1.2-1.5x faster on the real widths, decode unchanged (it
# streams memory), golden logits as close (see common/model/matvec.c).
$(BUILD)/common/model/matvec.o: CFLAGS += -ffp-contract=fast

$(BUILD)/tests/kernels/%: tests/unit/kernels.c common/model/matvec.c $(HEADERS) $(LIB)
	@mkdir -p $(dir $@)
	@echo "CC+LD $@"
	@$(CC) $(CFLAGS) $(WARN) -ffp-contract=fast $(KFLAGS_$*) $(LDFLAGS) -o $@ \
	    tests/unit/kernels.c common/model/matvec.c $(LIB) $(LDLIBS)

$(LIB): $(LIB_OBJ)
	@rm -f $@
	@ar rcs $@ $^

$(CLI_LIB): $(CLI_OBJ)
	@rm -f $@
	@ar rcs $@ $^

define tool_rule
$(BUILD)/bin/$(basename $(notdir $(1))): $(BUILD)/$(basename $(1)).o \
    $(patsubst %.c,$(BUILD)/%.o,$(call tool_helpers,$(1))) $(CLI_LIB) $(LIB)
	@mkdir -p $$(dir $$@)
	@echo "LD $$@"
	@$$(CC) $$(LDFLAGS) -o $$@ $$^ $$(LDLIBS)
endef
$(foreach m,$(MAINS),$(eval $(call tool_rule,$(m))))
# qmoe-pack shares blocks with its source the way qmoe-extract does.
$(BUILD)/bin/qmoe-pack: $(BUILD)/extract/extract_copy.o

define man_rule
$(BUILD)/man/$(basename $(notdir $(1))).1: $(BUILD)/bin/$(basename $(notdir $(1))) $(basename $(1)).h2m
	@mkdir -p $$(dir $$@)
	@echo "MAN $$@"
	@help2man --no-info --section 1 --include $(basename $(1)).h2m --output $$@.tmp $$< && mv $$@.tmp $$@
endef
$(foreach m,$(MAINS),$(eval $(call man_rule,$(m))))
man: $(MANS)

$(BUILD)/qmoe.pc: common/qmoe.pc.in Makefile
	@sed -e 's|@PREFIX@|$(PREFIX)|g' -e 's|@VERSION@|$(shell sed -n 's/^#define QMOE_VERSION "\(.*\)"/\1/p' common/base/util.h)|g' \
	    -e 's|@REQUIRES@|$(PKGS)|g' $< >$@.tmp && mv $@.tmp $@
.PHONY: $(BUILD)/qmoe.pc

$(BUILD)/tests/%: $(BUILD)/tests/unit/%.o $(CLI_LIB) $(LIB)
	@mkdir -p $(dir $@)
	@echo "LD $@"
	@$(CC) $(LDFLAGS) -o $@ $^ $(LDLIBS)

$(BUILD)/tests/tools/%: $(BUILD)/tests/tools/%.o $(CLI_LIB) $(LIB)
	@mkdir -p $(dir $@)
	@echo "LD $@"
	@$(CC) $(LDFLAGS) -o $@ $^ $(LDLIBS)

check: all
	@QMOE_BUILD=$(abspath $(BUILD)) bash tests/run.sh

demo: all
	@QMOE_BUILD=$(abspath $(BUILD)) bash samples/demo.sh

bench: all
	@QMOE_BUILD=$(abspath $(BUILD)) bash tests/bench/run.sh

install: all $(MANS) $(BUILD)/qmoe.pc
	install -d $(DESTDIR)$(PREFIX)/bin $(DESTDIR)$(PREFIX)/lib/pkgconfig
	install -d $(DESTDIR)$(PREFIX)/share/qmoe $(DESTDIR)$(PREFIX)/share/man/man1
	install -m 755 $(BINS) $(DESTDIR)$(PREFIX)/bin/
	install -m 644 $(LIB) $(DESTDIR)$(PREFIX)/lib/
	install -m 644 $(BUILD)/qmoe.pc $(DESTDIR)$(PREFIX)/lib/pkgconfig/
	for h in $(PUBLIC_HEADERS:common/%=%); do \
	    install -D -m 644 common/$$h $(DESTDIR)$(PREFIX)/include/qmoe/$$h || exit 1; done
	install -m 644 $(MANS) $(DESTDIR)$(PREFIX)/share/man/man1/
	install -m 644 samples/prompts samples/reference.txt samples/corpus.jsonl \
	    $(DESTDIR)$(PREFIX)/share/qmoe/

clean:
	rm -rf build build-san build-fuzz build-debug compile_commands.json
include tests/fuzz/fuzz.mk
include tests/cluster/cluster.mk
include tests/browser/browser.mk
