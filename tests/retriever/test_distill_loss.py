"""The distillation term: KL(teacher || student) against a hand-written reference, its gradient,
zero when the distributions agree, and weight 0 giving today's InfoNCE."""

from __future__ import annotations

import math

import pytest
import torch

from lamra.retriever.distill import distill_kl, distill_loss, teacher_logits
from lamra.retriever.loss import info_nce


def reference_kl(student: list[list[float]], teacher: list[list[float]]) -> float:
    """sum_i p_i log(p_i / q_i) per row, p = softmax(teacher), q = softmax(student), mean of rows."""
    total = 0.0
    for s_row, t_row in zip(student, teacher):
        p = [math.exp(t) / sum(math.exp(v) for v in t_row) for t in t_row]
        q = [math.exp(s) / sum(math.exp(v) for v in s_row) for s in s_row]
        total += sum(pi * math.log(pi / qi) for pi, qi in zip(p, q))
    return total / len(student)


def test_kl_equals_the_hand_written_reference_and_its_gradient():
    student_rows = [[1.0, -0.5, 2.0], [0.3, 0.2, -1.0]]
    teacher_rows = [[2.0, 0.0, -1.0], [-0.4, 1.5, 0.1]]
    student = torch.tensor(student_rows, dtype=torch.float64, requires_grad=True)
    kl = distill_kl(student, torch.tensor(teacher_rows, dtype=torch.float64))
    assert float(kl.detach()) == pytest.approx(reference_kl(student_rows, teacher_rows), abs=1e-6)
    kl.backward()
    # d/ds of KL(p || softmax(s)) is softmax(s) - p, per row, over the number of rows.
    teacher = torch.tensor(teacher_rows, dtype=torch.float64)
    expected = (torch.softmax(student.detach(), -1) - torch.softmax(teacher, -1)) / 2
    torch.testing.assert_close(student.grad.float(), expected.float(), atol=1e-6, rtol=1e-5)


def test_kl_is_zero_when_the_distributions_agree():
    logits = torch.tensor([[0.5, -1.0, 3.0, 0.0], [1.0, 1.0, 2.0, -2.0]])
    assert float(distill_kl(logits, logits)) == pytest.approx(0.0, abs=1e-7)
    assert float(distill_kl(logits, logits + 4.0)) == pytest.approx(0.0, abs=1e-6)  # softmax ignores a shift
    assert float(distill_kl(logits, logits.flip(-1))) > 0.1


def test_teacher_is_u_marvels_fused_score_halved_over_the_temperature():
    value = teacher_logits(torch.tensor([0.6]), torch.tensor([0.9]), temperature=0.05)
    assert float(value) == pytest.approx((0.6 + 0.9) / 2 / 0.05)
    value = teacher_logits(torch.tensor([0.6]), torch.tensor([0.9]), retrieval_weight=0.0, rerank_weight=2.0)
    assert float(value) == pytest.approx(0.9 * 2 / 2 / 0.05)


def unit(*shape, seed):
    generator = torch.Generator().manual_seed(seed)
    return torch.nn.functional.normalize(torch.randn(*shape, generator=generator), dim=-1)


def embeddings_with_grad():
    sides = {"query": unit(3, 8, seed=0), "positive": unit(3, 8, seed=1), "distill": unit(3 * 4, 8, seed=2)}
    return {name: tensor.clone().requires_grad_() for name, tensor in sides.items()}


def test_weight_zero_gives_todays_info_nce_with_its_gradients():
    teacher = torch.randn(3, 4, generator=torch.Generator().manual_seed(3)) * 5
    sides = embeddings_with_grad()
    values = distill_loss(sides, teacher, weight=0.0, temperature=0.05, gather=False)
    values["loss"].backward()
    plain = {name: tensor.detach().clone().requires_grad_() for name, tensor in sides.items()}
    reference = info_nce(plain["query"], plain["positive"], temperature=0.05, gather=False)
    reference.backward()
    assert float(values["loss"].detach()) == float(reference.detach())
    for name in ("query", "positive"):
        torch.testing.assert_close(sides[name].grad, plain[name].grad, atol=0, rtol=0)
    assert float(sides["distill"].grad.abs().max()) == 0.0
    assert float(values["kl"]) > 0  # the term is there, only weighed 0


def test_the_kl_term_compares_each_query_with_its_own_candidates():
    teacher = torch.randn(3, 4, generator=torch.Generator().manual_seed(4)) * 5
    sides = embeddings_with_grad()
    values = distill_loss(sides, teacher, weight=0.5, temperature=0.05, gather=False)
    student = torch.stack([sides["distill"][4 * i : 4 * i + 4] @ sides["query"][i] for i in range(3)]) / 0.05
    expected_kl = reference_kl(student.tolist(), teacher.tolist())
    nce = info_nce(sides["query"], sides["positive"], temperature=0.05, gather=False)
    assert float(values["kl"]) == pytest.approx(expected_kl, abs=1e-5)
    assert float(values["loss"].detach()) == pytest.approx(float(nce.detach()) + 0.5 * expected_kl, abs=1e-5)


# -- queries without a positive: InfoNCE over the labelled rows, the KL term over every row -----

def reference_info_nce(queries, positives, rows, temperature=0.05) -> float:
    """-log softmax(q_i . p / T)[i], averaged over ``rows``: every positive is a candidate."""
    logits = (queries @ positives.T / temperature).tolist()
    total = 0.0
    for i in rows:
        total += -(logits[i][i] - math.log(sum(math.exp(v) for v in logits[i])))
    return total / len(rows)


def test_info_nce_over_the_labelled_rows_equals_the_reference_and_keeps_every_candidate():
    queries, positives = unit(4, 8, seed=10).requires_grad_(), unit(4, 8, seed=11).requires_grad_()
    labelled = torch.tensor([True, False, True, False])
    value = info_nce(queries, positives, temperature=0.05, gather=False, labelled=labelled)
    assert float(value.detach()) == pytest.approx(reference_info_nce(queries.detach(), positives.detach(), [0, 2]),
                                                  abs=1e-5)
    value.backward()
    assert float(queries.grad[[1, 3]].abs().max()) == 0.0  # an unlabelled query learns nothing from InfoNCE
    assert float(positives.grad[[1, 3]].abs().max()) > 0  # its stand-in is still a negative for the others
    every = info_nce(queries, positives, temperature=0.05, gather=False, labelled=torch.ones(4, dtype=torch.bool))
    plain = info_nce(queries, positives, temperature=0.05, gather=False)
    assert float(every.detach()) == pytest.approx(float(plain.detach()))
    none = info_nce(queries, positives, temperature=0.05, gather=False, labelled=torch.zeros(4, dtype=torch.bool))
    assert float(none.detach()) == 0.0 and none.requires_grad


def test_an_unlabelled_query_learns_from_the_kl_term_alone():
    teacher = torch.randn(3, 4, generator=torch.Generator().manual_seed(5)) * 5
    sides = embeddings_with_grad()
    labelled = torch.tensor([True, False, True])
    values = distill_loss(sides, teacher, weight=0.5, temperature=0.05, gather=False, labelled=labelled)
    student = torch.stack([sides["distill"][4 * i : 4 * i + 4] @ sides["query"][i] for i in range(3)]) / 0.05
    expected_kl = reference_kl(student.tolist(), teacher.tolist())  # every row, the unlabelled one too
    expected_nce = reference_info_nce(sides["query"].detach(), sides["positive"].detach(), [0, 2])
    assert float(values["kl"]) == pytest.approx(expected_kl, abs=1e-5)
    assert float(values["info_nce"]) == pytest.approx(expected_nce, abs=1e-5)
    assert float(values["loss"].detach()) == pytest.approx(expected_nce + 0.5 * expected_kl, abs=1e-5)
    values["loss"].backward()
    assert float(sides["query"].grad[1].abs().max()) > 0  # through the KL term


# -- batch negatives: the other queries' positives in the student's distribution, teacher 0 ------

def reference_kl_with_outside(student, teacher, outside) -> float:
    """As :func:`reference_kl`, q normalised over the listed and the outside logits (p 0 outside)."""
    total = 0.0
    for s_row, t_row, o_row in zip(student, teacher, outside):
        p = [math.exp(t) / sum(math.exp(v) for v in t_row) for t in t_row]
        norm = sum(math.exp(v) for v in s_row) + sum(math.exp(v) for v in o_row if v != -math.inf)
        total += sum(pi * math.log(pi / (math.exp(s) / norm)) for pi, s in zip(p, s_row))
    return total / len(student)


def test_kl_with_outside_candidates_equals_the_reference_and_its_gradient():
    student_rows, teacher_rows = [[1.0, -0.5, 2.0], [0.3, 0.2, -1.0]], [[2.0, 0.0, -1.0], [-0.4, 1.5, 0.1]]
    outside_rows = [[-math.inf, 1.5], [0.7, -math.inf]]
    student = torch.tensor(student_rows, dtype=torch.float64, requires_grad=True)
    outside = torch.tensor(outside_rows, dtype=torch.float64, requires_grad=True)
    teacher = torch.tensor(teacher_rows, dtype=torch.float64)
    kl = distill_kl(student, teacher, outside)
    expected = reference_kl_with_outside(student_rows, teacher_rows, outside_rows)
    assert float(kl.detach()) == pytest.approx(expected, abs=1e-6)
    assert float(kl.detach()) > reference_kl(student_rows, teacher_rows) + 0.1  # the outside ones take mass
    kl.backward()
    # d/ds = q - p over the listed, q over the outside (0 where -inf), per row, over the rows.
    q = torch.softmax(torch.cat([student.detach(), outside.detach()], -1), -1)
    torch.testing.assert_close(student.grad, (q[:, :3] - torch.softmax(teacher, -1)) / 2, atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(outside.grad, q[:, 3:] / 2, atol=1e-6, rtol=1e-5)
    everything_out = torch.full((2, 2), -math.inf, dtype=torch.float64)
    assert float(distill_kl(student.detach(), teacher, everything_out)) == pytest.approx(
        float(distill_kl(student.detach(), teacher)), abs=1e-9)


def test_batch_negatives_are_the_other_queries_positives_not_the_own():
    teacher = torch.randn(3, 4, generator=torch.Generator().manual_seed(6)) * 5
    sides = embeddings_with_grad()
    labelled = torch.tensor([True, False, True])
    values = distill_loss(sides, teacher, weight=0.5, temperature=0.05, gather=False, labelled=labelled,
                          batch_negatives=True)
    query, positive = sides["query"].detach(), sides["positive"].detach()
    student = torch.stack([sides["distill"][4 * i : 4 * i + 4] @ query[i] for i in range(3)]) / 0.05
    outside = [[float(query[i] @ positive[j]) / 0.05 if j != i else -math.inf for j in range(3)] for i in range(3)]
    expected_kl = reference_kl_with_outside(student.tolist(), teacher.tolist(), outside)
    assert float(values["kl"]) == pytest.approx(expected_kl, abs=1e-5)
    assert float(values["kl"]) != pytest.approx(reference_kl(student.tolist(), teacher.tolist()), abs=1e-3)
    expected_nce = reference_info_nce(query, positive, [0, 2])
    assert float(values["loss"].detach()) == pytest.approx(expected_nce + 0.5 * expected_kl, abs=1e-5)
    values["loss"].backward()
    assert float(sides["positive"].grad[1].abs().max()) > 0  # the unlabelled stand-in: a negative for the others
