"""How often nano's reading of everyday prompts (`engine.heard.hear`) matches what a musician expects.

    python -m training.heard_check                 # prints the table; --out FILE writes it as Markdown

The prompts and expectations (`training/data/everyday_prompts.json`) were written before the interpreter. For each
prompt and each field with an expectation (genre, mood, drums, tempo, instruments), the field is right when the
interpretation equals it (instruments: every expected one is among those heard). Reports the share of fields right,
the share of prompts with every field right, and each miss.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from engine.heard import hear

PROMPTS = Path(__file__).parent / "data" / "everyday_prompts.json"
FIELDS = ("genre", "mood", "drums", "tempo", "instruments")


def check(case: dict) -> dict[str, tuple[object, object]]:
    """field -> (expected, heard) for every field with an expectation."""
    heard = hear(case["prompt"])
    out = {}
    for name in FIELDS:
        want = case.get(name)
        if want is None or want == []:
            continue
        got = getattr(heard, name)
        out[name] = (want, got)
    return out


def right(name: str, want, got) -> bool:
    return set(want) <= set(got) if name == "instruments" else want == got


def report(cases: list[dict]) -> str:
    fields = total = whole = 0
    misses = []
    for case in cases:
        results = check(case)
        ok = {n: right(n, *wg) for n, wg in results.items()}
        fields += sum(ok.values())
        total += len(ok)
        whole += all(ok.values())
        misses += [f"- \"{case['prompt']}\": {n} expected {results[n][0]!r}, heard {results[n][1]!r} "
                   f"(nano's prompt: \"{hear(case['prompt']).rewritten()}\")" for n, good in ok.items() if not good]
    lines = [f"{fields} of {total} expected fields right ({100 * fields / total:.0f} %); {whole} of {len(cases)} "
             f"prompts with every field right ({100 * whole / len(cases):.0f} %).", "", "Misses:", *misses]
    return "\n".join(lines)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--prompts", default=str(PROMPTS))
    p.add_argument("--out", default=None, help="also write the report here")
    args = p.parse_args(argv)
    text = report(json.loads(Path(args.prompts).read_text())["prompts"])
    print(text)
    if args.out:
        Path(args.out).write_text(text + "\n")


if __name__ == "__main__":
    main()
