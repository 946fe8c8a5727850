"""make demo's rankings: with the demo reranker they are the pipeline's reranked, fused order."""

from __future__ import annotations


def test_demo_rankings_are_the_pipelines_when_a_reranker_is_given(tmp_path, tiny_checkpoint, image_files):
    from rich.console import Console

    from lamra import Item, Reranker, Retriever
    from lamra.demo.show import _show
    from lamra.index import Index
    from lamra.pipeline import search

    retriever = Retriever.from_pretrained(tiny_checkpoint, device="cpu")
    reranker = Reranker.from_pretrained(tiny_checkpoint, device="cpu")
    records = [{"id": f"img{n}", "image": str(path), "label": f"label {n}"} for n, path in enumerate(image_files)]
    index = Index.build(records, retriever, tmp_path / "index", show_progress=False)
    instruction = "Find me an everyday image that matches the given caption."

    headers: list[list[str]] = []

    def shown(rerank) -> list[str]:
        console = Console(record=True, width=240)
        _show(console, index, retriever, "a red circle", None, instruction, 3, rerank, "demo_task")
        text = console.export_text()
        header = next(line for line in text.splitlines() if line.startswith("┃ "))  # rich's heavy header row
        headers.append([cell.strip() for cell in header.split("┃")[1:-1]])
        return [line.split("│")[2].strip() for line in text.splitlines() if line.startswith("│ ")]

    alpha = 0.0  # the reranker alone: its order differs from retrieval's for this random model
    expected = search(retriever, index, reranker, [Item(text="a red circle", id="query")], top_k=4, k=3,
                      alpha=alpha, instruction=instruction)[0]
    assert shown((reranker, {"demo_task": alpha}, 4)) == [hit.id for hit in expected]
    scores, ids = index.search(retriever.encode([Item(text="a red circle")], instruction, show_progress=False), k=3)
    assert shown(None) == list(ids[0])
    assert [hit.id for hit in expected] != list(ids[0])  # so the first check saw reranking happen
    assert "fused" in headers[0] and "fused" not in headers[1]

    class NotForThisTask:
        """A reranker trained and validated for other tasks: it must not be asked about this one."""

        def __getattr__(self, name):
            raise AssertionError(f"the reranker was used ({name}) for a task it was not trained for")

    # It leaves this task's ranking alone: nothing scored, no fused column, the retrieval order.
    assert shown((NotForThisTask(), {"another_task": alpha}, 4)) == list(ids[0])
    assert headers[-1] == headers[1]


def test_python_m_lamra_demo_runs_the_demo_entry_point():
    """``make demo`` runs ``python -m lamra.demo``: the package's __main__ must reach the demo's
    own argument parser (its --help names the demo's options)."""
    import subprocess
    import sys

    done = subprocess.run([sys.executable, "-m", "lamra.demo", "--help"], capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr
    assert "--train-reranker" in done.stdout and "--untrained" in done.stdout
