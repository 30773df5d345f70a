#!/usr/bin/env bash
# usage.sh - every tool words a usage error the same way (cli/cli.h
# qm_usage_error): "TOOL: MESSAGE", then "Try 'TOOL --help' for more
# information.", exit 2; for an unknown option and for missing operands.
. "$(dirname "$0")/lib.sh"
plan 13
for tool in qmoe-extract qmoe-status qmoe-verify qmoe-run qmoe-mksample qmoe-pack; do
    want=$'\n'"Try '$tool --help' for more information."
    run "$tool" --no-such-option x
    [ "$rc" = 2 ] && [ "$err" = "$tool: Unknown option --no-such-option$want" ] &&
        ok "$tool-unknown-option" || fail "$tool-unknown-option" "exit $rc: $err"
    run "$tool"
    [ "$rc" = 2 ] && [[ "$err" == "$tool: "*"$want" ]] && [ "$(printf '%s\n' "$err" | wc -l)" = 2 ] &&
        ok "$tool-no-operand" || fail "$tool-no-operand" "exit $rc: $err"
done

# --help: every option's description starts with a capital letter in all
# five tools, as GLib's own "Show help options" does (qmoe-run's were
# lower case); a config key such as hidden_size may start one
low=""
for t in qmoe-extract qmoe-status qmoe-verify qmoe-run qmoe-mksample; do
    n=$("$t" --help | grep -cE '^  (-[a-zA-Z], )?--[a-z-]+(=[A-Za-z|/]+)? {2,}[^ ]')
    [ "$n" -gt 3 ] || low="$low $t:only-$n-options"
    low="$low$("$t" --help | grep -E '^  (-[a-zA-Z], )?--[a-z-]+(=[A-Za-z|/]+)? {2,}[a-z]' | grep -vE ' {2,}[a-z]+_[a-z_]+[ ,]' | sed "s/^/ $t:/" | head -3)"
done
[ -z "$low" ] && ok help-capitalised || fail help-capitalised "$low"
