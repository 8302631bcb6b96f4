"""The SVG plots of src/eval/svg_plot.cpp parse as XML and hold what a reader needs.

The sample plots come from the gtest binary itself (SvgSamples.Write writes <name>.svg and <name>.expect into
$KVLENS_SVG_OUT); ctest sets KVLENS_SVG_TEST_BIN to it. Unset -> skipped; set but not executable -> failed.
No browser or renderer is needed: well-formed XML with the expected elements is the check.
"""

from __future__ import annotations

import os
import re
import subprocess
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

SVG_NS = "http://www.w3.org/2000/svg"
NUM = re.compile(r"-?\d+(\.\d+)?")


def _q(tag: str) -> str:
    return f"{{{SVG_NS}}}{tag}"


@pytest.fixture(scope="module")
def sample_bin() -> str:
    b = os.environ.get("KVLENS_SVG_TEST_BIN", "")
    if not b:
        pytest.skip("KVLENS_SVG_TEST_BIN is not set (ctest sets it to <build>/tests/svg_plot_test)")
    if not (os.path.isfile(b) and os.access(b, os.X_OK)):
        pytest.fail(f"KVLENS_SVG_TEST_BIN={b} is not an executable file (build svg_plot_test first)")
    return b


def _write_samples(binary: str, out: Path) -> list[Path]:
    out.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ, KVLENS_SVG_OUT=str(out))
    r = subprocess.run([binary, "--gtest_filter=SvgSamples.Write"], env=env, capture_output=True, text=True,
                       timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr
    svgs = sorted(out.glob("*.svg"))
    assert len(svgs) >= 4, f"expected the sample plots in {out}, found {[p.name for p in svgs]}"
    return svgs


@pytest.fixture(scope="module")
def samples(sample_bin, tmp_path_factory) -> list[Path]:
    return _write_samples(sample_bin, tmp_path_factory.mktemp("svg"))


def _expect(svg: Path) -> tuple[int, list[str]]:
    lines = svg.with_suffix(".expect").read_text(encoding="utf-8").splitlines()
    return int(lines[0]), lines[1:]


def _path_points(d: str) -> list[tuple[float, float]]:
    tokens = d.replace("M", " M ").replace("L", " L ").split()
    assert tokens and tokens[0] == "M", f"path data must start with a move: {d[:80]!r}"
    pts = []
    i = 0
    while i < len(tokens):
        assert tokens[i] in ("M", "L"), f"unexpected token {tokens[i]!r} in {d[:80]!r}"
        pts.append((float(tokens[i + 1]), float(tokens[i + 2])))
        i += 3
    return pts


def test_samples_are_well_formed_svg(samples):
    for svg in samples:
        text = svg.read_text(encoding="utf-8")
        assert text.startswith('<?xml version="1.0" encoding="UTF-8"?>\n'), svg.name
        root = ET.fromstring(text.encode("utf-8"))  # raises on malformed XML
        assert root.tag == _q("svg"), f"{svg.name}: root is {root.tag}, not an SVG-namespaced <svg>"
        w, h = int(root.get("width")), int(root.get("height"))
        assert root.get("viewBox") == f"0 0 {w} {h}", svg.name
        for el in root.iter():
            for name, value in el.attrib.items():
                assert "nan" not in value.lower() and "inf" not in value.lower(), f"{svg.name}: {name}={value}"


def test_one_path_per_visible_series_inside_the_plot_area(samples):
    for svg in samples:
        root = ET.parse(svg).getroot()
        n_paths, _ = _expect(svg)
        paths = [p for p in root.iter(_q("path")) if p.get("class") == "series"]
        assert len(paths) == n_paths, f"{svg.name}: {len(paths)} series paths, expected {n_paths}"
        (area,) = [r for r in root.iter(_q("rect")) if r.get("class") == "plot-area"]
        x0, y0 = float(area.get("x")), float(area.get("y"))
        x1, y1 = x0 + float(area.get("width")), y0 + float(area.get("height"))
        for p in paths:
            assert p.get("fill") == "none" and p.get("stroke"), svg.name
            for x, y in _path_points(p.get("d")):
                assert x0 - 0.01 <= x <= x1 + 0.01 and y0 - 0.01 <= y <= y1 + 0.01, \
                    f"{svg.name}: ({x}, {y}) outside the plot area [{x0}, {x1}] x [{y0}, {y1}]"


def test_legend_and_titles(samples):
    for svg in samples:
        root = ET.parse(svg).getroot()
        _, labels = _expect(svg)
        legends = [g for g in root.iter(_q("g")) if g.get("class") == "legend"]
        if not labels:
            assert not legends, f"{svg.name}: a legend without series"
            continue
        assert len(legends) == 1, svg.name
        texts = [t.text for t in legends[0].iter(_q("text"))]
        assert texts == labels, f"{svg.name}: legend {texts}, expected {labels}"  # ET unescapes &amp; etc.
        titles = [t.text for t in root.iter(_q("text")) if t.get("class") == "title"]
        assert len(titles) == 1 and titles[0], svg.name
        assert root.find(_q("title")).text == titles[0], svg.name
        tick_labels = [t.text for g in root.iter(_q("g")) if g.get("class") == "tick-labels"
                       for t in g.iter(_q("text"))]
        assert len(tick_labels) >= 4 and all(NUM.fullmatch(t) for t in tick_labels), f"{svg.name}: {tick_labels}"


def test_output_is_byte_identical_across_runs(sample_bin, samples, tmp_path):
    again = _write_samples(sample_bin, tmp_path / "again")
    assert [p.name for p in again] == [p.name for p in samples]
    for a, b in zip(samples, again):
        assert a.read_bytes() == b.read_bytes(), f"{a.name} differs between two runs"
