"""Quick run of benchmarks/group_scale.py: the shrunk group std keeps tied groups' advantages bounded."""

from __future__ import annotations

import re


def test_quick_run_writes_the_tables(load_script, tmp_path):
    bench = load_script("benchmarks/group_scale.py", "group_scale_under_test")
    out = tmp_path / "gs.md"
    text = bench.main(["--batches", "5", "--out", str(out)])
    assert out.read_text() == text and "`python benchmarks/group_scale.py --batches 5" in text
    rows = re.findall(r"^\| 2 \| [0-9.]+ \| ([0-9.e+]+) \| ([0-9.]+) \| ([0-9.]+) \|", text, flags=re.M)
    assert len(rows) == 2  # with and without unscorable rewards
    for raw, shrunk, batch in rows:
        # tied binary groups: TRL's raw std (+1e-4) blows the James-Stein advantage up; the shrunk one does not
        assert float(raw) > 100 and float(shrunk) < 5 and float(batch) < 5
    assert len(re.findall(r"^\| [248] \| (0|0\.5|1) \| ", text, flags=re.M)) == 9
