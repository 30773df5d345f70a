#!/usr/bin/python3
"""routerstats_check.py CORPUS ROUTER_LOG STATS_JSON

Recomputes the router statistics of `qmoe-run --router-stats` independently,
from its --router-log (one JSON line per token and layer, with the corpus
line it came from) and the corpus's domain labels, and compares them with
the tool's --json: the counts exactly, MI, H(domain), NMI, purity, load,
share and lift to 1e-6. Prints "ok NAME" / "FAIL NAME" lines (tests/run.sh).
"""
import json
import math
import sys
from collections import defaultdict

TOL = 1e-6


def main():
    corpus, log, stats = sys.argv[1:4]
    domain_of = {}
    with open(corpus, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if line.strip():
                domain_of[n] = json.loads(line)["domain"]
    # picks per layer: {(domain, expert): n}
    counts = defaultdict(lambda: defaultdict(int))
    with open(log, encoding="utf-8") as f:
        for line in f:
            r = json.loads(line)
            for e in r["experts"]:
                counts[r["layer"]][(domain_of[r["line"]], e)] += 1
    with open(stats, encoding="utf-8") as f:
        tool = json.load(f)
    domains = [d["domain"] for d in tool["domains"]]
    n_exp = tool["n_experts"]
    bad = []
    worst = 0.0

    def near(what, a, b):
        nonlocal worst
        worst = max(worst, abs(a - b))
        if abs(a - b) > TOL:
            bad.append(f"{what}: script {a!r}, tool {b!r}")

    if sorted(set(domain_of.values())) != sorted(domains):
        bad.append(f"domains: corpus {sorted(set(domain_of.values()))}, tool {domains}")
    if sorted(counts) != [l["layer"] for l in tool["layers"]]:
        bad.append(f"layers: log {sorted(counts)}, tool {[l['layer'] for l in tool['layers']]}")
    for L in tool["layers"]:
        c = counts[L["layer"]]
        N = sum(c.values())
        pd = {d: sum(v for (x, _), v in c.items() if x == d) for d in domains}
        pe = {e: sum(v for (_, x), v in c.items() if x == e) for e in range(n_exp)}
        h = -sum(v / N * math.log2(v / N) for v in pd.values() if v)
        mi = sum(v / N * math.log2(v * N / (pd[d] * pe[e])) for (d, e), v in c.items())
        purity = sum(max(c.get((d, e), 0) for d in domains) for e in range(n_exp)) / N
        tag = f"layer {L['layer']}"
        if L["picks"] != N:
            bad.append(f"{tag}: picks script {N}, tool {L['picks']}")
        for i, d in enumerate(domains):
            row = [c.get((d, e), 0) for e in range(n_exp)]
            if row != L["counts"][i]:
                bad.append(f"{tag} {d}: counts differ")
        near(f"{tag} mi_bits", mi, L["mi_bits"])
        near(f"{tag} h_domain_bits", h, L["h_domain_bits"])
        near(f"{tag} nmi", mi / h if h > 0 else 0.0, L["nmi"])
        near(f"{tag} purity", purity, L["purity"])
        for e in range(n_exp):
            near(f"{tag} load {e}", pe[e] / N, L["load"][e])
        never = [e for e in range(n_exp) if pe[e] == 0]
        if never != L["never_chosen"]:
            bad.append(f"{tag}: never chosen script {never}, tool {L['never_chosen']}")
        for t in L["top"]:
            d = t["domain"]
            for x in t["experts"]:
                e = x["expert"]
                share = c.get((d, e), 0) / pd[d]
                near(f"{tag} {d} share {e}", share, x["share"])
                near(f"{tag} {d} lift {e}", share / (pe[e] / N), x["lift"])
            order = sorted((e for e in range(n_exp) if c.get((d, e), 0)),
                           key=lambda e: (-c[(d, e)], e))
            if [x["expert"] for x in t["experts"]] != order[:len(t["experts"])]:
                bad.append(f"{tag} {d}: top experts script {order}, tool "
                           f"{[x['expert'] for x in t['experts']]}")
    name = "routerstats_independent" + (sys.argv[4] if len(sys.argv) > 4 else "")
    if bad:
        print(f"FAIL {name}: " + "; ".join(bad[:5]))
        return 1
    mis = " ".join(f"{L['mi_bits']:.6f}" for L in tool["layers"])
    print(f"ok {name} (MI bits per layer {mis}; largest difference {worst:.2e})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
