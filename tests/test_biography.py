"""The biography task (people, held-out phrasings, vocabulary) and the shipped model."""

from __future__ import annotations

import numpy as np
import pytest

from saelab.biography.lm import (
    PRETRAINED_DIR,
    BioLMConfig,
    answer_accuracy,
    answer_position_activations,
    load_bio_lm,
    people_of,
    read_metadata,
    reproduce_command,
)
from saelab.biography.task import (
    QUESTION_FRAMES,
    RELATIONS,
    VOCAB,
    biography,
    held_out_frame,
    make_people,
    questions,
)
from saelab.config import ConfigError


def test_people_are_seeded_distinct_and_complete():
    a, b = make_people(50, seed=4), make_people(50, seed=4)
    assert a == b and [p.values for p in a] == [p.values for p in b]
    assert len({p.name for p in a}) == 50
    assert all(set(p.values) == set(RELATIONS) for p in a)
    assert make_people(50, seed=5) != a


def test_held_out_phrasings_never_appear_in_training_but_their_parts_do():
    people = make_people(5, seed=0)
    train, held = questions(people, held_out=False), questions(people, held_out=True)
    train_pairs = {(q.relation, q.frame) for q in train}
    assert not train_pairs & {(q.relation, q.frame) for q in held}
    assert {tuple(q.prompt) for q in train}.isdisjoint(tuple(q.prompt) for q in held)
    for r in range(len(RELATIONS)):
        frame = held_out_frame(r)
        # the held-out frame is trained with other relations, the relation with other frames
        assert any(f == frame for rr, f in train_pairs if rr != r)
        assert sum(1 for rr, _ in train_pairs if rr == r) == len(QUESTION_FRAMES) - 1


def test_every_biography_and_question_is_in_the_vocabulary():
    people = make_people(30, seed=2)
    rng = np.random.default_rng(0)
    for p in people:
        bio = biography(p, rng)
        assert VOCAB.decode(VOCAB.encode(bio)) == bio
        assert all(v in bio for v in p.values.values())
    with pytest.raises(ValueError, match="not in the biography vocabulary"):
        VOCAB.encode("Q : who is Zorro ?")


def test_the_shipped_model_answers_held_out_phrasings_as_recorded():
    model, cfg = load_bio_lm()
    meta = read_metadata(PRETRAINED_DIR)
    assert meta["command"] == reproduce_command(cfg)
    acc = answer_accuracy(model, questions(people_of(cfg), held_out=True))
    assert acc == meta["answer_accuracy"]["held_out"]
    assert acc["all"]["exact"] > 0.9


def test_activations_are_read_at_the_answer_position():
    model, cfg = load_bio_lm()
    qs = questions(people_of(cfg), held_out=True)[:4]
    acts = answer_position_activations(model, qs, layer=1)
    assert acts.shape == (4, cfg.d_model)
    # batching with padding must not change a question's activation
    alone = answer_position_activations(model, qs[2:3], layer=1)
    assert np.allclose(acts[2].numpy(), alone[0].numpy(), atol=1e-5)
    with pytest.raises(ConfigError, match="out of range"):
        answer_position_activations(model, qs, layer=cfg.n_layer)


def test_the_default_config_is_the_shipped_one():
    _, cfg = load_bio_lm()
    assert cfg == BioLMConfig()
