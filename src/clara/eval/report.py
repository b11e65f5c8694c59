"""Reports of an evaluation run: a Markdown table and PNG plots (matplotlib, Agg backend).

    results.md         one row per system: EM, F1, cover-EM, acc, Recall@1/3/5, latency;
                       then breakdowns by question type and hop count
    f1_vs_ratio.png    CLaRa F1 against compression ratio, baselines as horizontal lines
    recall_at_k.png    Recall@1/3/5 per retriever
    latency.png        retrieval and generation milliseconds per question
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..io import atomic_write_text

COLUMNS = [("em", "EM"), ("f1", "F1"), ("cover_em", "cover-EM"), ("acc", "acc"),
           ("recall@1", "R@1"), ("recall@3", "R@3"), ("recall@5", "R@5")]


def _fmt(value: Any) -> str:
    return "-" if value is None else f"{value:.2f}"


def _table(rows: dict[str, dict[str, Any]], first: str, latency: bool) -> list[str]:
    cols = [(k, h) for k, h in COLUMNS if any(k in r for r in rows.values())]
    head = [first, "n", *(h for _, h in cols)] + (["retrieve ms", "generate ms"] if latency else [])
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for name, r in rows.items():
        cells = [name, str(r["n"]), *(_fmt(r.get(k)) for k, _ in cols)]
        if latency:
            cells += [_fmt(r["latency_ms"].get("retrieve")), _fmt(r["latency_ms"].get("generate"))]
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def markdown(metrics: dict[str, Any]) -> str:
    """The run's results as Markdown tables (all numbers in percent, latency in ms per question)."""
    systems = metrics["systems"]
    lines = [
        f"# Evaluation: {Path(str(metrics.get('data', ''))).name}",
        "",
        f"Setting **{metrics['setting']}**, {metrics.get('n_questions', '?')} questions, top-{metrics.get('top_k', '?')} "
        f"documents; answers scored by {metrics.get('answer_scoring', 'max over gold answers')} "
        "(EM, token F1, cover-EM, acc = normalised gold is a substring of the prediction), "
        "Recall@k = share of gold documents in the top k. All in percent.",
        "",
        *_table(systems, "system", latency=True),
    ]
    for field_name, title in (("by_type", "question type"), ("by_hops", "hop count")):
        for name, summary in systems.items():
            groups = summary.get(field_name)
            if groups:
                lines += ["", f"## {name} by {title}", "", *_table(groups, title, latency=False)]
    return "\n".join(lines) + "\n"


def _plots(metrics: dict[str, Any], out: Path) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")  # files only; never open a window
    import matplotlib.pyplot as plt

    systems = metrics["systems"]
    written = []
    # F1 against compression ratio: CLaRa points, baselines as lines
    clara = sorted(((s["info"]["compression_ratio"], s.get("f1"), n) for n, s in systems.items()
                    if s["info"].get("reader") == "clara" and s.get("f1") is not None), key=lambda t: t[0])
    if clara:
        fig, ax = plt.subplots(figsize=(6, 4))
        ax.plot([c[0] for c in clara], [c[1] for c in clara], "o-", label="CLaRa")
        for ratio, f1, name in clara:
            ax.annotate(name, (ratio, f1), fontsize=7, textcoords="offset points", xytext=(3, 3))
        for i, (name, s) in enumerate((n, s) for n, s in systems.items() if s["info"].get("reader") == "text"):
            if s.get("f1") is not None:
                ax.axhline(s["f1"], ls="--", lw=1, color=f"C{i + 1}", label=name)
        ax.set_xscale("log", base=2)
        ax.set_xlabel("compression ratio (document tokens per memory token)")
        ax.set_ylabel("F1 (%)")
        ax.set_title(f"F1 vs compression ({metrics['setting']})")
        ax.legend(fontsize=7)
        written.append(_save(fig, out / "f1_vs_ratio.png"))
    # Recall@k per retriever
    retrievers = {n: s for n, s in systems.items() if "recall@1" in s}
    if retrievers:
        fig, ax = plt.subplots(figsize=(6, 4))
        ks = [1, 3, 5]
        for name, s in retrievers.items():
            ax.plot(ks, [s.get(f"recall@{k}") for k in ks], "o-", label=name)
        ax.set_xticks(ks)
        ax.set_xlabel("k")
        ax.set_ylabel("Recall@k (%)")
        ax.set_ylim(0, 100)
        ax.set_title(f"Retrieval ({metrics['setting']})")
        ax.legend(fontsize=7)
        written.append(_save(fig, out / "recall_at_k.png"))
    # latency per question, stacked retrieval + generation
    names = list(systems)
    if names:
        retrieve = [systems[n]["latency_ms"].get("retrieve") or 0.0 for n in names]
        generate = [systems[n]["latency_ms"].get("generate") or 0.0 for n in names]
        fig, ax = plt.subplots(figsize=(max(4, 1.2 * len(names)), 4))
        ax.bar(names, retrieve, label="retrieve")
        ax.bar(names, generate, bottom=retrieve, label="generate")
        ax.set_ylabel("ms per question")
        ax.set_title("Latency")
        ax.tick_params(axis="x", labelrotation=30, labelsize=7)
        ax.legend(fontsize=7)
        written.append(_save(fig, out / "latency.png"))
    return written


def _save(fig: Any, path: Path) -> Path:
    import matplotlib.pyplot as plt

    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def write_report(metrics: dict[str, Any], out_dir: str | Path) -> list[Path]:
    """Write results.md and the plots into ``out_dir``; returns the files written."""
    out = Path(out_dir)
    atomic_write_text(out / "results.md", markdown(metrics))
    return [out / "results.md", *_plots(metrics, out)]
