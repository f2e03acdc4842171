"""Reference rows of a table file (`reference: true`): the paper's numbers, never run."""

from __future__ import annotations

from pathlib import Path

from partial_relevance.tables import load_table_spec, plan_jobs, render_markdown, summarize


def test_hero_rows_are_printed_and_never_planned(tmp_path: Path) -> None:
    spec = load_table_spec("prem_vr")
    hero = [r for r in spec.rows if r.reference]
    assert [r.name for r in hero] == [
        "HERO TVR (reported, not re-run)",
        "HERO DiDeMo (reported, not re-run)",
    ]
    assert hero[0].paper == {"R@1": 29.01, "R@5": 52.82, "R@10": 63.07, "R@100": 89.91}
    assert hero[1].paper == {"R@1": 8.46, "R@5": 23.43, "R@10": 34.86, "R@100": 75.36}
    for data in ("synthetic", "real"):
        jobs = plan_jobs(spec, data, [0], root=tmp_path)
        assert {j.row.name for j in jobs} == {"TVR", "DiDeMo"}
    markdown = render_markdown(spec, summarize(spec, [], {}), "real", "-", [0])
    assert "| HERO TVR (reported, not re-run) | - | 29.01 |" in markdown
    assert markdown.rstrip().endswith("| ref. |")


def test_prvr_tables_carry_every_paper_number() -> None:
    """SPEC §8: PRVR Table 2 has R@1/5/10/100 + SumR on every row, Table 4's last row too."""
    full = {"R@1", "R@5", "R@10", "R@100", "SumR"}
    for row in load_table_spec("prvr_ablation").rows:
        assert set(row.paper) == full, row.name
    assert set(load_table_spec("prvr_tcp").rows[-1].paper) == full
    both = load_table_spec("prvr_ablation").rows[-1].paper
    assert both == {"R@1": 2.9, "R@5": 9.2, "R@10": 14.9, "R@100": 54.3, "SumR": 81.3}
