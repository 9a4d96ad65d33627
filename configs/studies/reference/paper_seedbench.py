"""Write paper_seedbench_released.csv from the released-results table of shared/reference/paper.md."""
import csv
import sys
from pathlib import Path

DIMENSIONS = ["1", "2", "3", "4", "5", "6", "7", "8", "9"]  # SU II IA IL IC SR IIn VR TR, by question_type_id
QUESTIONS = {"1": 3158, "2": 1831, "3": 4649, "4": 978, "5": 2447, "6": 657, "7": 97, "8": 331, "9": 85}  # SEED-Bench-1
CONNECTORS = {"Two-layer MLP": ("mlp", "preserving"), "Linear": ("linear", "preserving"),
              "Avg pool": ("avgpool", "compressing"), "Q-Former": ("qformer", "compressing"),
              "C-Abstractor": ("c_abstractor", "compressing")}


def main(paper_md: str) -> None:
    text = Path(paper_md).read_text()
    table = text[text.index("| checkpoint | connector | Q | px | total |"):]
    rows = []
    for line in (x for x in table.splitlines() if x.startswith("| `")):
        cells = [c.strip() for c in line.strip("|").split("|")]
        name, kind, q, px, values = cells[0].strip("`"), cells[1], cells[2], cells[3], cells[5:14]
        if kind not in CONNECTORS:
            continue  # the abandoned pool variant: its token count is not known
        key, family = CONNECTORS[kind]
        for dim, value in zip(DIMENSIONS, values, strict=True):
            rows.append({"cell": f"paper:{name}", "connector": key, "family": family, "resolution": int(px),
                         "tokens": "" if family == "preserving" else int(q), "seed": "", "variant": "released",
                         "benchmark": "seedbench", "level": "subtask", "name": dim, "n": QUESTIONS[dim],
                         "accuracy": round(float(value) / 100, 4), "visual_tokens": int(q)})
    out = Path(__file__).with_name("paper_seedbench_released.csv")
    with out.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    print(f"{out}: {len(rows)} rows")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "../shared/reference/paper.md")
