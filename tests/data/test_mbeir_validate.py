"""``lamra data validate`` finds each planted defect at its file, line and field, and nothing else."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from lamra.cli import main
from lamra.data.mbeir import MBEIRLayout
from lamra.data.mbeir_validate import validate_mbeir
from lamra.data.synthetic import SynthConfig, synthesize


@pytest.fixture(scope="module")
def clean_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("validate") / "mbeir"
    synthesize(root, SynthConfig(seed=5, test_queries=3, train_queries=2, pool_size=8, image_size=32))
    return root


@pytest.fixture
def root(clean_root, tmp_path):
    copy = tmp_path / "mbeir"
    shutil.copytree(clean_root, copy)
    return copy


def read(path: Path) -> list[str]:
    return path.read_text().splitlines(keepends=True)


def write(path: Path, lines: list[str]) -> None:
    path.write_text("".join(lines))


def unused_line(pool: Path, queries: Path) -> int:
    """A pool line no query points to (so breaking it does not break a query too)."""
    used = {d for line in read(queries) for d in json.loads(line)["pos_cand_list"]}
    return next(n for n, line in enumerate(read(pool), start=1) if json.loads(line)["did"] not in used)


def test_clean_synthetic_root_validates(clean_root, capsys):
    report = validate_mbeir(clean_root)
    assert report.ok, [str(p) for p in report.problems]
    assert len(report.lines) == 16 * 3 + 2 + 10 + 1  # test queries, pools, qrels; union pools; train files
    assert main(["data", "validate", str(clean_root)]) == 0
    assert "ok:" in capsys.readouterr().out


def test_each_planted_defect_is_reported_with_its_file_line_and_field(root, capsys):
    layout = MBEIRLayout(root)
    expected = set()

    # 1. malformed JSON in a local pool (on a line no query needs)
    pool = layout.local_pool("cirr_task7")
    lines, number = read(pool), unused_line(pool, layout.query_file("cirr_task7"))
    lines[number - 1] = '{"txt": null, "did": \n'
    write(pool, lines)
    expected.add(("cand_pool/local/mbeir_cirr_task7_cand_pool.jsonl", number, None))

    # 2. unknown modality in a query file
    queries = layout.query_file("nights_task4")
    lines = read(queries)
    record = json.loads(lines[1])
    record["query_modality"] = "video"
    lines[1] = json.dumps(record) + "\n"
    write(queries, lines)
    expected.add(("query/test/mbeir_nights_task4_test.jsonl", 2, "query_modality"))

    # 3. a qrels line naming a did that is in no pool
    qrels = layout.qrels_file("webqa_task1")
    lines = read(qrels)
    fields = lines[0].split()
    lines[0] = " ".join(fields[:2] + ["2:99999"] + fields[3:]) + "\n"
    write(qrels, lines)
    expected.add(("qrels/test/mbeir_webqa_task1_test_qrels.txt", 1, "did"))  # not in the local pool
    # (the union pool is checked too: the same line, reported once per pool)

    # 4. a pos_cand_list did that is not in the pool
    queries = layout.query_file("oven_task6")
    lines = read(queries)
    record = json.loads(lines[2])
    record["pos_cand_list"].append("5:424242")
    lines[2] = json.dumps(record) + "\n"
    write(queries, lines)
    expected.add(("query/test/mbeir_oven_task6_test.jsonl", 3, "pos_cand_list"))

    # 5. a missing image
    pool = layout.local_pool("mscoco_task0")
    lines = read(pool)
    record = json.loads(lines[4])
    record["img_path"] = "mbeir_images/mscoco_images/test/gone.png"
    lines[4] = json.dumps(record) + "\n"
    write(pool, lines)
    expected.add(("cand_pool/local/mbeir_mscoco_task0_test_cand_pool.jsonl", 5, "img_path"))

    # 6. duplicate ids: a did repeated in a pool, a qid repeated in a query file
    pool = layout.local_pool("edis_task2")
    lines = read(pool)
    write(pool, lines + [lines[0]])
    expected.add(("cand_pool/local/mbeir_edis_task2_cand_pool.jsonl", len(lines) + 1, "did"))
    queries = layout.query_file("fashioniq_task7")
    lines = read(queries)
    write(queries, lines + [lines[1]])
    expected.add(("query/test/mbeir_fashioniq_task7_test.jsonl", len(lines) + 1, "qid"))

    report = validate_mbeir(root)
    found = {(p.file, p.line, p.field) for p in report.problems}
    assert found == expected, "\n".join(str(p) for p in report.problems)
    qrels_problems = [p for p in report.problems if p.file.startswith("qrels/")]
    assert len(qrels_problems) == 2  # the local pool and the union pool both lack the did
    duplicate = next(p for p in report.problems if p.field == "did" and p.file.endswith("edis_task2_cand_pool.jsonl"))
    assert "first on line 1" in duplicate.message

    # The command prints each problem as file:line and exits non-zero.
    assert main(["data", "validate", str(root)]) == 1
    out = capsys.readouterr()
    assert "query/test/mbeir_nights_task4_test.jsonl:2" in out.out and "field 'query_modality'" in out.out
    assert f"{len(report.problems)} problem(s)" in out.err


def test_missing_files_images_and_instructions(root):
    layout = MBEIRLayout(root)
    layout.qrels_file("cirr_task7").unlink()
    (root / "instructions" / "query_instructions.tsv").write_text("header\ntext\timage\tMSCOCO\t9\tOnly one.\n")
    report = validate_mbeir(root, tasks=["cirr_task7", "nights_task4"])
    messages = [str(p) for p in report.problems]
    assert any("mbeir_cirr_task7_test_qrels.txt: missing file" in m for m in messages)
    assert any("no instruction for nights_task4" in m for m in messages)
    assert any("no instruction for cirr_task7" in m for m in messages)
    assert len(report.problems) == 3
    # Deleting an image is found on every line that uses it; --no-images skips the file checks.
    image = next((root / "mbeir_images" / "nights_images").rglob("*.png"))
    image.unlink()
    report = validate_mbeir(root, tasks=["nights_task4"])
    missing = [p for p in report.problems if "image file not found" in p.message]
    assert missing and all(image.name in p.message for p in missing)
    assert not [p for p in validate_mbeir(root, tasks=["nights_task4"], check_images=False).problems
                if "image file" in p.message]
