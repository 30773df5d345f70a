# tests/browser/browser.mk - `make test-browser`: the coherent sample's
# report rendered by headless Chromium, its screenshot decoded and checked
# (size, not blank, the report's colours). As root it installs chromium
# when missing. Included at the end of the Makefile.
.PHONY: test-browser
test-browser: all
	@QMOE_BUILD=$(abspath $(BUILD)) bash tests/browser/run.sh
