"""Classification metrics, retrieval (CMC / mAP), linear CKA and t-SNE against hand-computed values."""

import math

import numpy as np
import pytest
import torch

from peerlearn.evaluate.analyses import item_entropy
from peerlearn.evaluate.embedding import load_embedding, save_embedding, tsne_embedding
from peerlearn.evaluate.metrics import (classification_metrics, confusion_matrix, macro_f1, row_normalised,
                                       topk_accuracy)
from peerlearn.evaluate.retrieval import concatenate_features, retrieval_metrics, score_query
from peerlearn.evaluate.similarity import cka_matrix, linear_cka

# five items, three classes: predictions 0, 1, 1, 2, 2 for labels 0, 0, 1, 1, 2
PROBS = np.array([[0.7, 0.2, 0.1], [0.3, 0.6, 0.1], [0.2, 0.5, 0.3], [0.1, 0.3, 0.6], [0.2, 0.2, 0.6]])
LABELS = np.array([0, 0, 1, 1, 2])


def test_confusion_precision_recall_f1_by_hand():
    matrix = confusion_matrix(LABELS, PROBS.argmax(1), 3)
    assert matrix.tolist() == [[1, 1, 0], [0, 1, 1], [0, 0, 1]]
    result = classification_metrics(PROBS, LABELS, ["x", "y", "z"])
    per_class = {c["class"]: c for c in result["per_class"]}
    # precision: 1/1, 1/2, 1/2; recall: 1/2, 1/2, 1/1; F1 = 2PR/(P+R)
    assert [per_class[c]["precision"] for c in "xyz"] == pytest.approx([1.0, 0.5, 0.5])
    assert [per_class[c]["recall"] for c in "xyz"] == pytest.approx([0.5, 0.5, 1.0])
    assert [per_class[c]["f1"] for c in "xyz"] == pytest.approx([2 / 3, 0.5, 2 / 3])
    assert [per_class[c]["support"] for c in "xyz"] == [2, 2, 1]
    assert result["macro_f1"] == pytest.approx(11 / 18)
    assert result["top1"] == pytest.approx(3 / 5)
    assert result["top5"] is None  # fewer than five classes
    assert result["nll"] == pytest.approx(-np.mean(np.log([0.7, 0.3, 0.5, 0.3, 0.6])))


def test_confusion_matrix_ignores_unlabelled_items_and_row_normalises_by_hand():
    labels = torch.tensor([0, 0, 1, 2, 2, 2, -1])
    predicted = torch.tensor([0, 1, 1, 2, 0, 2, 1])
    counts = confusion_matrix(labels, predicted, 3)
    assert counts.tolist() == [[1, 1, 0], [0, 1, 0], [1, 0, 2]]  # the unlabelled item is ignored
    assert row_normalised(counts)[2] == pytest.approx([1 / 3, 0, 2 / 3])
    assert row_normalised(np.zeros((2, 2))).tolist() == [[0, 0], [0, 0]]  # a class without items stays 0


def test_item_entropy_by_hand():
    logits = torch.tensor([[0.0, 0.0], [math.log(3.0), 0.0]])  # p = (1/2, 1/2) and (3/4, 1/4)
    expected = torch.tensor([math.log(2.0), -(0.75 * math.log(0.75) + 0.25 * math.log(0.25))])
    assert torch.allclose(item_entropy(logits), expected, atol=1e-6)


def test_one_vs_rest_auc_by_hand():
    result = classification_metrics(PROBS, LABELS)
    aucs = [c["roc_auc"] for c in result["per_class"]]
    # class 0: positives 0.7, 0.3 beat all negatives 0.2, 0.1, 0.2 -> 6/6
    # class 1: positives 0.5, 0.3 vs negatives 0.2, 0.6, 0.2 -> 4/6
    # class 2: positive 0.6 vs 0.1, 0.1, 0.3, 0.6 -> (3 + 1/2)/4 (a tie counts half)
    assert aucs == pytest.approx([1.0, 2 / 3, 0.875])
    assert result["roc_auc_macro"] == pytest.approx((1.0 + 2 / 3 + 0.875) / 3)


def test_topk_ties_and_unlabelled_items():
    assert topk_accuracy(PROBS, LABELS, 2) == 1.0
    assert topk_accuracy(PROBS, np.array([1, 2, 0, 0, 1]), 1) == 0.0
    # an unlabelled item (-1) changes nothing
    probs = np.vstack([PROBS, [[0.0, 0.0, 1.0]]])
    labels = np.append(LABELS, -1)
    assert classification_metrics(probs, labels)["macro_f1"] == pytest.approx(11 / 18)
    assert classification_metrics(probs, labels)["items"] == 5


def test_absent_class_is_left_out_of_macro_scores():
    probs = np.hstack([PROBS, np.zeros((5, 1))])  # a 4th class, never present, never predicted
    result = classification_metrics(probs, LABELS)
    assert result["macro_f1"] == pytest.approx(11 / 18)
    assert result["per_class"][3]["roc_auc"] is None
    assert result["roc_auc_macro"] == pytest.approx((1.0 + 2 / 3 + 0.875) / 3)
    assert macro_f1(np.zeros((2, 2))) != macro_f1(np.zeros((2, 2)))  # nothing seen: NaN


# --------------------------------------------------------------------------- retrieval
# 1-D features: distance = |position difference|. (identity, camera, position)
GALLERY = [(1, 1, 0.1),   # same identity and camera as query 0: junk for it
           (2, 2, 0.2),
           (-1, 3, 0.3),  # junk identity
           (1, 2, 0.4),   # match of query 0
           (0, 1, 0.5),   # distractor: stays as a negative
           (1, 3, 0.6),   # match of query 0
           (3, 1, 0.7)]
QUERIES = [(1, 1, 0.0), (2, 1, 0.21), (5, 1, 0.0)]  # the third has no match anywhere


def _arrays(rows):
    ids, cams, pos = zip(*rows)
    return np.array(pos)[:, None], np.array(ids), np.array(cams)


def test_market_protocol_cmc_and_map_by_hand():
    qf, qi, qc = _arrays(QUERIES)
    gf, gi, gc = _arrays(GALLERY)
    # query 0 ranks g1, g3, g4, g5, g6 after removing g0 (same camera) and g2 (junk): hits at 2 and 4
    assert score_query(np.abs(gf[:, 0] - 0.0), 1, 1, gi, gc) == (pytest.approx((1 / 2 + 2 / 4) / 2), 2)
    # query 1: its only match g1 is nearest
    assert score_query(np.abs(gf[:, 0] - 0.21), 2, 1, gi, gc) == (1.0, 1)
    result = retrieval_metrics(qf, qi, qc, gf, gi, gc, ranks=(1, 2, 5), normalise=False)
    assert result["queries"] == 2 and result["skipped"] == 1
    assert result["cmc"] == pytest.approx({"rank1": 0.5, "rank2": 1.0, "rank5": 1.0})
    assert result["map"] == pytest.approx((0.5 + 1.0) / 2)


def test_average_precision_agrees_with_scikit_learn_without_junk():
    from sklearn.metrics import average_precision_score

    rng = np.random.default_rng(0)
    gallery, query = rng.normal(size=(40, 5)), rng.normal(size=(1, 5))
    ids = rng.integers(1, 4, size=40)
    cams = np.full(40, 2)  # query camera 1: nothing is removed
    distance = ((gallery - query) ** 2).sum(1)
    ap, _ = score_query(distance, 1, 1, ids, cams)
    assert ap == pytest.approx(average_precision_score(ids == 1, -distance))


def test_cohort_features_are_concatenated_unit_vectors():
    rng = np.random.default_rng(1)
    a, b = rng.normal(size=(6, 3)), rng.normal(size=(6, 5))
    joint = concatenate_features({"a": a, "b": b})
    assert joint.shape == (6, 8)
    assert np.allclose(np.linalg.norm(joint, axis=1), math.sqrt(2))
    # squared distances add up: the cohort ranks by the sum of the members' (normalised) distances
    na, nb = a / np.linalg.norm(a, axis=1, keepdims=True), b / np.linalg.norm(b, axis=1, keepdims=True)
    assert ((joint[0] - joint[1]) ** 2).sum() == pytest.approx(((na[0] - na[1]) ** 2).sum() + ((nb[0] - nb[1]) ** 2).sum())


# --------------------------------------------------------------------------- CKA
def test_linear_cka_by_hand_and_invariances():
    # 1-D: CKA is the squared correlation; centred x = (-1, 0, 1), y = (-1, 1, 0): corr = 1/2
    assert linear_cka([[1.0], [2.0], [3.0]], [[1.0], [3.0], [2.0]]) == pytest.approx(0.25)
    rng = np.random.default_rng(0)
    x = rng.normal(size=(300, 10))
    q, _ = np.linalg.qr(rng.normal(size=(10, 10)))
    assert linear_cka(x, x @ q) == pytest.approx(1.0)
    assert linear_cka(x, 3.5 * x) == pytest.approx(1.0)
    assert linear_cka(x, x + 7.0) == pytest.approx(1.0)  # centred: a shift changes nothing
    w = np.linalg.qr(rng.normal(size=(20, 10)))[0].T  # 10 x 20 with orthonormal rows: a wider space
    assert linear_cka(x, x @ w) == pytest.approx(1.0)
    assert linear_cka(x, x[:, :5]) < 0.9  # half the directions: clearly less than 1


def test_linear_cka_of_independent_features_is_small():
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(2000, 10)), rng.normal(size=(2000, 10))
    assert linear_cka(x, y) < 0.02
    matrix = cka_matrix({"a": x, "b": y, "c": 2 * x})
    assert matrix["a"]["a"] == 1.0 and matrix["a"]["c"] == pytest.approx(1.0)
    assert matrix["a"]["b"] == matrix["b"]["a"] < 0.02


# --------------------------------------------------------------------------- t-SNE
def test_tsne_keeps_clusters_apart_and_round_trips(tmp_path):
    rng = np.random.default_rng(0)
    labels = np.repeat([0, 1, 2], 30)
    centres = rng.normal(size=(3, 16)) * 10
    features = {"a": centres[labels] + rng.normal(size=(90, 16)), "b": centres[labels] + rng.normal(size=(90, 16))}
    embedding = tsne_embedding(features, labels, perplexity=10, seed=0, class_names=["p", "q", "r"])
    for name in ("a", "b"):
        coords = np.asarray(embedding["coordinates"][name])
        assert coords.shape == (90, 2)
        # every point's nearest neighbour in the map has its label
        d = ((coords[:, None] - coords[None]) ** 2).sum(-1) + np.eye(90) * 1e9
        assert (labels[d.argmin(1)] == labels).all()
    save_embedding(embedding, tmp_path)
    loaded = load_embedding(tmp_path)
    assert loaded["members"] == ["a", "b"] and loaded["coordinates"]["a"].shape == (90, 2)
    assert (loaded["labels"] == labels).all()


# --------------------------------------------------------------------------- property checks
from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402


def _reference_query(distances, query_id, query_cam, ids, cams):
    """A plain loop over the gallery in distance order: skip junk, count hits."""
    ranked = sorted(range(len(distances)), key=lambda i: (distances[i], i))
    rank, hits, precisions, first = 0, 0, [], None
    for i in ranked:
        if ids[i] == -1 or (ids[i] == query_id and cams[i] == query_cam):
            continue
        rank += 1
        if ids[i] == query_id:
            hits += 1
            precisions.append(hits / rank)
            first = first or rank
    return (sum(precisions) / hits, first) if hits else None


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.integers(-1, 3), st.integers(1, 3), st.integers(0, 20)), min_size=1, max_size=25),
       st.integers(1, 3), st.integers(1, 3))
def test_score_query_matches_a_plain_loop(gallery, query_id, query_cam):
    ids, cams, distances = (np.array(column) for column in zip(*gallery))
    expected = _reference_query(distances.astype(float), query_id, query_cam, ids, cams)
    got = score_query(distances.astype(float), query_id, query_cam, ids, cams)
    if expected is None:
        assert got is None
    else:
        assert got[0] == pytest.approx(expected[0]) and got[1] == expected[1]
