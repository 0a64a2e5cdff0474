"""Synthetic clips and HumanML3D-style features: exact round trips and invariances."""

import numpy as np
import pytest
import torch

from course_lib.motion.features import N_FEATS, Normalizer, heading_angle, joints_to_features, recover_from_ric
from course_lib.motion.skeleton import KINEMATIC_CHAINS, N_JOINTS, PARENTS, body_height, rest_pose, rot_y
from course_lib.motion.synth import ACTIONS, MAX_FRAMES, make_dataset


@pytest.fixture(scope="module")
def clips():
    return make_dataset(40, seed=3)


def test_skeleton_matches_humanml3d_layout():
    assert N_JOINTS == 22 and len(PARENTS) == 22
    assert all(PARENTS[j] < j for j in range(1, 22))  # parents first: one FK pass suffices
    assert KINEMATIC_CHAINS[0] == [0, 2, 5, 8, 11] and KINEMATIC_CHAINS[2] == [0, 3, 6, 9, 12, 15]
    p = rest_pose()
    assert p[:, 1].min() == pytest.approx(0.0) and p[1, 0] > 0 > p[2, 0]  # feet on the ground, left hip at +x
    assert 1.4 < body_height() < 1.9


def test_dataset_is_deterministic_balanced_and_grounded(clips):
    again = make_dataset(40, seed=3)
    assert all(np.array_equal(a["joints"], b["joints"]) and a["caption"] == b["caption"] for a, b in zip(clips, again, strict=True))
    assert sorted({c["action"] for c in clips}) == sorted(ACTIONS)
    for c in clips:
        T = c["joints"].shape[0]
        assert c["joints"].shape == (T, 22, 3) and T % 4 == 0 and T <= MAX_FRAMES
        assert c["joints"][:, :, 1].min() >= -1e-5
        np.testing.assert_allclose(c["joints"][0, 0, [0, 2]], 0.0, atol=1e-6)  # starts at the origin


def test_features_joints_features_round_trip(clips):
    for c in clips:
        f = joints_to_features(c["joints"])
        assert f.shape == (len(c["joints"]), N_FEATS) == (len(c["joints"]), 67)
        j = recover_from_ric(f)
        np.testing.assert_allclose(j, c["joints"], atol=1e-5)          # clips start canonical: joints come back
        np.testing.assert_allclose(joints_to_features(j), f, atol=1e-5)  # and so do the features


def test_features_ignore_where_the_clip_starts_and_faces(clips):
    j = clips[0]["joints"].astype(np.float64)
    moved = (rot_y(np.array(0.7)) @ j[..., None])[..., 0] + np.array([2.0, 0.0, -3.0])
    np.testing.assert_allclose(joints_to_features(moved), joints_to_features(j), atol=1e-5)


def test_turn_left_turns_left_and_contacts_dimension(clips):
    turn = next(c for c in clips if c["action"] == "turn_left")
    assert np.degrees(heading_angle(turn["joints"])[-1]) == pytest.approx(turn["meta"]["angle"] if turn["meta"]["angle"] == 90 else 180, abs=25)
    f = joints_to_features(turn["joints"], contacts=True)
    assert f.shape[1] == 71 and set(np.unique(f[:, 67:])) <= {0.0, 1.0}
    np.testing.assert_allclose(recover_from_ric(f), recover_from_ric(f[:, :67]))


def test_normalizer_inverts():
    feats = [np.random.default_rng(i).normal(size=(20, 67)).astype(np.float32) for i in range(3)]
    n = Normalizer.fit(feats)
    x = torch.from_numpy(feats[0])
    torch.testing.assert_close(n.denorm(n.norm(x)), x, atol=1e-5, rtol=1e-5)
