"""The 12 zero-shot sets read from their native layout: every rendered prompt (retrieval and
rerank) equals the official string, written out here literally; text stays raw."""

from __future__ import annotations

import pickle

import pytest
import zeroshot_layout as layout

from lamra.errors import InputError
from lamra.evaluation.zeroshot_sets import find_sets, read_set
from lamra.evaluation.zeroshot_sets.prompts import rerank_text, retrieval_text

HEAD = "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\n"
TAIL = "<|im_end|>\n<|im_start|>assistant\n<emb>.<|im_end|>\n<|im_start|>assistant\n"
IMG = "<|vision_start|><|image_pad|><|vision_end|>"
VID = "<|vision_start|><|video_pad|><|vision_end|>"
SYS = ("I will provide you with a query and a candidate. Please evaluate whether the candidate                 "
       "       meets the requirements of the query. If it does, respond with 'Yes'; if it doesn't, responed with "
       "'No'.")
S_TXT = "\nSummarize above sentence in one word: "
S_IMG = "\nSummarize above image in one word: "
S_IT = "\nSummarize above image and sentence in one word: "
I2T = "Find an image caption describing the following everyday image."


def ret(dataset, side, position=0):
    text = retrieval_text(dataset.sides[side].entries[position].parts)
    assert text.startswith(HEAD) and text.endswith(TAIL)
    return text[len(HEAD):-len(TAIL)]


def rank(task, query=0, candidate=0):
    text = rerank_text(task.rerank_queries[query], task.rerank_candidates[candidate])
    head, tail = HEAD + SYS, "<|im_end|>\n<|im_start|>assistant\n"
    assert text.startswith(head) and text.endswith(tail)
    return text[len(head):-len(tail)]


def build(tmp_path, name):
    layout.BUILDERS[name](tmp_path)
    return tmp_path


def test_the_system_string_has_24_spaces_and_the_typo():
    assert SYS.count(" " * 24) == 1 and "candidate" + " " * 24 + "meets" in SYS and "responed" in SYS


def test_sharegpt4v(tmp_path):
    s = read_set(build(tmp_path, "sharegpt4v"), "sharegpt4v")
    assert ret(s, "images", 1) == IMG + I2T + S_IT
    assert ret(s, "texts") == "a red square on a white wall" + S_TXT  # raw: no capital, no period
    t2i, i2t = s.tasks
    assert (t2i.queries, t2i.candidates, i2t.queries, i2t.candidates) == ("texts", "images", "images", "texts")
    assert rank(t2i) == "Query:Find me an everyday image that matches the given caption. a red square on a white wall" \
                        "Candidate:" + IMG
    assert rank(i2t, 0, 1) == "Query:" + IMG + I2T + "Candidate:two green fields"
    assert [t.rerank_k for t in s.tasks] == [10, 10] and [t.rerank_weight for t in s.tasks] == [1.0, 1.0]
    assert t2i.positives == [[0], [1], [2]] and i2t.positives == [[0], [1], [2]]


def test_urban1k_instruction_is_a_python_set_and_captions_the_stripped_first_line(tmp_path):
    s = read_set(build(tmp_path, "urban1k"), "urban1k")
    assert ret(s, "images") == IMG + "{'Find an image caption describing the following everyday image.'}" + S_IT
    assert ret(s, "texts") == "a long street at night" + S_TXT
    assert rank(s.tasks[1]) == "Query:" + IMG + I2T + "Candidate:a long street at night"  # rerank: no set
    assert rank(s.tasks[0]) == ("Query:Find me an everyday image that matches the given caption. a long street at "
                                "night" "Candidate:" + IMG)


def test_flickr_five_captions_per_image(tmp_path):
    s = read_set(build(tmp_path, "flickr30k"), "flickr30k")
    assert ret(s, "images") == IMG + I2T + S_IT  # ZS.sh's --mode finetuned
    assert ret(s, "texts", 7) == "image 1 caption 2" + S_TXT
    t2i, i2t = s.tasks
    assert t2i.positives == [[0]] * 5 + [[1]] * 5
    assert i2t.positives == [[0, 1, 2, 3, 4], [5, 6, 7, 8, 9]]


def test_circo_test_and_val(tmp_path):
    root = build(tmp_path, "circo")
    s = read_set(root, "circo")
    assert ret(s, "queries") == IMG + "I'm looking for a similar everyday image with the described changes. " \
                                      "is red and has a dog" + S_IT
    assert ret(s, "images") == IMG + S_IMG
    assert s.sides["queries"].entries[0].parts[0].name == "000000000011.jpg"
    # The rerank instruction lost its period (datasets_circo.py L174).
    assert rank(s.tasks[0]) == ("Query:" + IMG + "I'm looking for a similar everyday image with the described "
                                "changes is red and has a dog" "Candidate:" + IMG)
    assert s.tasks[0].submission and s.tasks[0].submission_keys == ["7", "8"]
    assert len(s.sides["images"].entries) == 5  # the reference images stay in the pool
    val = read_set(root, "circo-val")
    assert [t.metrics for t in val.tasks] == [("MAP@5", "MAP@10", "MAP@25", "MAP@50"), ("R@5", "R@10", "R@25", "R@50")]
    assert val.tasks[0].positives == [[2, 3], [4]] and val.tasks[1].positives == [[2], [4]]


def test_genecis_instructions_and_galleries(tmp_path):
    s = read_set(build(tmp_path, "genecis"), "genecis")
    changes = "I'm looking for a similar everyday image with the described changes. "
    same = "I'm looking for an image with the same attributes as described. "
    for task in ("change_object", "focus_object", "change_attribute"):  # focus_object keeps "changes" (official)
        assert ret(s, f"{task}_queries") == IMG + changes + ("dog" if "object" in task else "wooden") + S_IT
    assert ret(s, "focus_attribute_queries") == IMG + same + "wooden" + S_IT
    assert ret(s, "change_object_images") == IMG + S_IMG
    by_name = {t.name: t for t in s.tasks}
    assert rank(by_name["focus_object"]) == "Query:" + IMG + changes + "dog" + "Candidate:" + IMG
    assert rank(by_name["focus_attribute"]) == "Query:" + IMG + same + "wooden" + "Candidate:" + IMG
    coco = s.sides["change_object_images"].entries
    assert [e.id for e in coco] == ["2", "3", "4"] and coco[0].parts[0].name == "000000000002.jpg"
    vaw = s.sides["focus_attribute_images"].entries
    assert [e.id for e in vaw] == ["21_0_1.jpg", "22_0_2.jpg", "23_0_3.jpg"]
    assert s.sides["focus_attribute_queries"].entries[0].parts[0].name == "20_0_0.jpg"
    assert by_name["change_object"].lists == [[0, 1, 2]] and by_name["change_object"].positives == [[0]]
    assert [t.metrics for t in s.tasks] == [("R@1", "R@2", "R@3")] * 4 and s.mean.startswith("R@1 mean")


def test_vist_official_query_drops_the_last_context_pair_and_lamra_keeps_it(tmp_path):
    root = build(tmp_path, "vist")
    s = read_set(root, "vist", "official")
    story = ("I will provide you with a series of images and captions from a story, and I need you to retrieve the "
             "image corresponding to the last caption.")
    plural = "\nSummarize above images and sentences in one word: "
    assert ret(s, "queries") == (story + "we went to the park" + IMG + "the dog ran" + IMG + "we ate lunch" + IMG
                                 + "we went home" + plural)
    assert rank(s.tasks[0], 0, 5) == ("Query:" + story + "we went to the park" + IMG + "the dog ran" + IMG
                                      + "we ate lunch" + IMG + "it started to rain" + IMG + "we went home"
                                      "Candidate:" + IMG)
    lamra = read_set(root, "vist")  # the default: every context pair
    assert ret(lamra, "queries") == (story + "we went to the park" + IMG + "the dog ran" + IMG + "we ate lunch" + IMG
                                     + "it started to rain" + IMG + "we went home" + plural)
    ids = [e.id for e in s.sides["images"].entries]
    assert ids == sorted(f"p{n}" for n in range(1, 11))  # every photo of the file, sorted ids
    assert [e.parts[0].suffix for e in s.sides["images"].entries[2:4]] == [".png", ".gif"]  # p2, p3
    task = s.tasks[0]
    assert [[ids[p] for p in row] for row in task.masked] == [["p1", "p2", "p3", "p4"], ["p6", "p7", "p8", "p9"]]
    assert [[ids[p] for p in row] for row in task.positives] == [["p5"], ["p10"]]


def test_visdial_dialog_text_and_the_dialogue_rerank(tmp_path):
    s = read_set(build(tmp_path, "visdial"), "visdial")
    dialog = "Q: is it sunny? A: yes. Q: how many people? A: two."
    assert ret(s, "dialogs") == "Find me an everyday image that matches the given dialog. " + dialog + S_TXT
    assert ret(s, "images") == IMG + S_IMG
    assert s.sides["images"].entries[1].parts[0].name == "VisualDialog_val2018_000000000006.jpg"
    assert rank(s.tasks[0]) == "Query:Find the image that matches the dialogue " + dialog + "Candidate:" + IMG


def test_multiturn_fashion(tmp_path):
    s = read_set(build(tmp_path, "fashioniq-multiturn"), "fashioniq-multiturn")
    fashion = "Find me a similar fashion image based on the following multi-round modifications."
    assert ret(s, "queries") == fashion + IMG + "is darker" + IMG + "has sleeves and is longer" + S_IT  # singular
    assert ret(s, "queries", 1) == fashion + IMG + "is red" + S_IT
    assert rank(s.tasks[0]) == "Query:" + fashion + IMG + "is darker" + IMG + "has sleeves and is longer" \
                               "Candidate:" + IMG
    names = [e.id for e in s.sides["images"].entries]
    assert names[:2] == ["B001", "B002"]  # the references stay in the pool
    assert s.tasks[0].metrics == ("R@5", "R@8", "R@10") and s.tasks[0].positives == [[2], [4]]


def test_ccneg_last_samples_and_commas(tmp_path, monkeypatch):
    from lamra.evaluation.zeroshot_sets import matching

    assert matching.CCNEG_SAMPLES == 40_000
    layout.ccneg(tmp_path, count=3)
    monkeypatch.setattr(matching, "CCNEG_SAMPLES", 2)
    s = read_set(tmp_path, "ccneg")
    assert [e.parts[0].name for e in s.sides["images"].entries] == ["1.jpg", "2.jpg"]  # the last two
    assert ret(s, "images") == IMG + S_IMG
    assert [ret(s, "texts", j) for j in range(2)] == ["a dog, running 1" + S_TXT, "a cat not running 1" + S_TXT]
    task = s.tasks[0]
    assert task.lists == [[0, 1], [2, 3]] and task.metrics == ("ITM",) and task.rerank_k == 2
    assert task.rerank_weight == 1.0
    assert rank(task, 0, 1) == "Query:" + IMG + I2T + "Candidate:a cat not running 1"


def test_sugar_crepe_subsets(tmp_path):
    s = read_set(build(tmp_path, "sugar-crepe"), "sugar-crepe")
    assert [t.name for t in s.tasks] == ["add_att", "swap_obj"]
    assert ret(s, "add_att_texts", 1) == "a blue car" + S_TXT and ret(s, "add_att_images") == IMG + S_IMG
    assert rank(s.tasks[0], 1, 3) == "Query:" + IMG + I2T + "Candidate:a short man"
    assert [t.rerank_weight for t in s.tasks] == [0.1, 0.1] and [t.rerank_k for t in s.tasks] == [2, 2]
    assert s.mean.startswith("ITM mean")


def test_video_sets_are_retrieval_only(tmp_path):
    root = tmp_path
    layout.msrvtt(root)
    layout.msvd(root)
    msrvtt, msvd = read_set(root, "msrvtt"), read_set(root, "msvd")
    video_prefix = "Find an everyday video match with caption. "
    assert ret(msrvtt, "texts", 1) == video_prefix + "a girl sings" + S_TXT
    assert ret(msrvtt, "videos") == VID + "\nSummarize above video in one word: "
    assert msrvtt.sides["videos"].entries[1].parts[0].nframes is None  # fps sampling
    assert [ret(msvd, "texts", j) for j in range(3)] == [video_prefix + t + S_TXT for t in
                                                         ("a man is cooking", "someone cooks", "a cat plays")]
    assert msvd.sides["videos"].entries[0].parts[0].nframes == 12
    assert msvd.tasks[0].positives == [[0], [0], [1]]
    assert all(t.rerank_queries is None for t in msrvtt.tasks + msvd.tasks)


def test_find_sets_lists_what_is_there(tmp_path):
    assert find_sets(tmp_path) == []
    layout.flickr(tmp_path)
    layout.vist(tmp_path)
    assert find_sets(tmp_path) == ["flickr30k", "vist"]


@pytest.mark.parametrize("name, breaks, where", [
    ("sharegpt4v", lambda root: layout.write_json(root / "sharegpt4v" / "datas_for_validation.json",
                                                  [{"image_name": "sa_1.jpg"}]),
     ["[sharegpt4v]", "datas_for_validation.json", "entry 0", "'caption'"]),
    ("vist", lambda root: (root / "vist" / "images" / "val" / "p7.jpg").unlink(),
     ["[vist]", "val.story-in-sequence.json", "entry 6", "'photo_flickr_id'", "p7.gif"]),
    ("msrvtt", lambda root: (root / "msrvtt" / "videos" / "video7021.mp4").unlink(),
     ["[msrvtt]", "MSRVTT_JSFUSION_test.csv:3", "'video_id'"]),
    ("urban1k", lambda root: (root / "Urban1k" / "caption" / "2.txt").unlink(), ["[urban1k]", "2.txt"]),
    ("visdial", lambda root: layout.write_json(root / "visdial" / "visdial_1.0_val.json", {"data": {
        "questions": ["q"], "answers": ["a"], "dialogs": [{"image_id": 5, "dialog": [{"question": 3, "answer": 0}]}]}}),
     ["[visdial]", "dialog 0", "'question'", "outside data.questions"]),
])
def test_a_bad_file_names_set_file_line_or_entry_and_field(tmp_path, name, breaks, where):
    layout.BUILDERS[name](tmp_path)
    breaks(tmp_path)
    with pytest.raises(InputError) as caught:
        read_set(tmp_path, name)
    for part in where:
        assert part in str(caught.value)


def test_msvd_refuses_a_pickle_that_runs_code(tmp_path):
    layout.msvd(tmp_path)

    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    (tmp_path / "MSVD" / "raw-captions.pkl").write_bytes(pickle.dumps({"vid_a": Evil()}))
    with pytest.raises(InputError, match=r"raw-captions.pkl: \[msvd\] .*refusing"):
        read_set(tmp_path, "msvd")
