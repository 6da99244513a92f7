"""Collect results/deploy/*_golden.json and *_verilator.json into summary.json and print the README table."""

from __future__ import annotations

import json
from pathlib import Path

HERE = Path(__file__).parent


def main() -> None:
    rows = []
    for f in sorted(HERE.glob("*_golden.json")) + sorted(HERE.glob("*_verilator.json")):
        d = json.loads(f.read_text())
        variant = f.stem.rsplit("_", 1)[0]
        rows.append({
            "variant": variant, "backend": d["backend"], "sentences": d["sentences"],
            "identical_predictions": d["identical_predictions"], "identical_logits": d["identical_logits"],
            "accuracy": d["accuracy"], "engine_layers": d["layers_per_sentence"], "lane_steps": d["lane_steps"],
            "rtl_cycles": d["rtl_cycles"], "rtl_lane_steps_per_s": d["rtl_lane_steps_per_s"],
            "sentences_per_min": d["sentences_per_min"], "wall_s": d["wall_s"], "lanes": d["engine"]["lanes"],
            "load_avg_1m": d["machine"]["load_avg_1m"], "file": f.name,
        })
    (HERE / "summary.json").write_text(json.dumps({"rows": rows}, indent=1) + "\n")
    print("| variant | backend | sentences | identical predictions | identical logits | accuracy | RTL lane-steps/s "
          "| sentences/min |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        lps = f"{r['rtl_lane_steps_per_s']:,}" if r["rtl_lane_steps_per_s"] else "--"
        print(f"| {r['variant']} | {r['backend']} | {r['sentences']} | {r['identical_predictions']} | "
              f"{r['identical_logits']} | {r['accuracy']:.4f} | {lps} | {r['sentences_per_min']} |")


if __name__ == "__main__":
    main()
