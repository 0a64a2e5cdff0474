"""Templated captions with synonyms: the text half of the synthetic (caption, motion) pairs.

Captions are drawn from a small grammar so the text encoder has to learn that "strolls",
"walks" and "is walking" mean the same action, and that "left"/"right" or "twice" change it.
"""

from __future__ import annotations

import random

SUBJECTS = ["a person", "someone", "a man", "a woman", "the person", "a figure", "the character", "a child"]
SPEED_WORDS = {"slow": ["slowly", "at a slow pace", "leisurely"], "normal": ["", "", "at a normal pace"],
               "fast": ["quickly", "fast", "at a fast pace", "briskly"]}
REPS_WORDS = {1: ["once", "one time", "a single time"], 2: ["twice", "two times"], 3: ["three times", "thrice"]}


def _join(*parts: str) -> str:
    return " ".join(p for p in parts if p).strip()


def caption_for(meta: dict, rng: random.Random) -> str:
    """One caption for a clip described by meta (action + modifiers)."""
    a, subj = meta["action"], rng.choice(SUBJECTS)
    speed = rng.choice(SPEED_WORDS[meta.get("speed", "normal")])
    reps = rng.choice(REPS_WORDS[meta.get("reps", 1)])
    if a == "walk":
        verb = rng.choice(["walks", "is walking", "strolls", "walks steadily"])
        way = rng.choice(["forward", "ahead", "straight ahead"] if meta["direction"] == "forward" else ["backward", "backwards"])
        return _join(subj, verb, way, speed)
    if a == "run":
        verb = rng.choice(["runs", "is running", "jogs", "runs forward", "sprints"])
        return _join(subj, verb, speed)
    if a == "jump":
        verb = rng.choice(["jumps", "hops", "leaps", "jumps up"])
        where = "forward" if meta["forward"] else rng.choice(["in place", "on the spot", ""])
        return _join(subj, verb, where, reps, speed)
    if a in ("wave_left", "wave_right"):
        side = a.split("_")[1]
        return _join(subj, rng.choice([f"waves with the {side} hand", f"waves the {side} hand", f"raises the {side} hand and waves",
                                       f"waves hello with the {side} arm", f"waves {side} hand"]), speed)
    if a == "squat":
        verb = rng.choice(["squats", "does squats", "squats down and stands up", "crouches down and rises", "bends the knees and squats"])
        return _join(subj, verb, reps, speed)
    if a in ("turn_left", "turn_right"):
        side = a.split("_")[1]
        if meta["angle"] == 180:
            return _join(subj, rng.choice([f"turns around to the {side}", f"turns all the way around to the {side}",
                                           f"spins around to the {side}"]), speed)
        return _join(subj, rng.choice([f"turns {side}", f"turns to the {side}", f"rotates to the {side}", f"turns {side} in place"]), speed)
    if a == "kick":
        leg = meta["leg"]
        return _join(subj, rng.choice([f"kicks with the {leg} leg", f"kicks forward with the {leg} foot",
                                       f"does a front kick with the {leg} leg", f"kicks the {leg} leg"]), reps, speed)
    if a == "idle":
        return _join(subj, rng.choice(["stands still", "stands in place", "is standing idle", "waits", "stays still",
                                       "stands and does nothing", "remains standing"]))
    raise ValueError(f"unknown action {a!r}")
