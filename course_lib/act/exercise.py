"""Checks for chapter 04's exercises that hold no answer a student could read.

- `check_halt_step(fn)`: the student's halting rule is run on puzzles of probabilities drawn here
  (the student never sees them) and its answers are compared with stored sha256 hashes, one per
  case, so neither this file nor any output holds the expected steps. The library's own halting
  functions are blocked while the student's code runs: the exercise is to write the rule.
- `check_forced_cost(fn)`: the truth is *measured*: a small reasoner is run in forced mode on
  batches whose size and step budget the student does not pick, counting the calls of the network
  and the rows each call computes.
"""

from __future__ import annotations

import contextlib
import hashlib
import random
from collections.abc import Callable, Iterator

import torch

HALT_CASES_SEED = 2604
HALT_CASES = 60


def halt_step_cases() -> list[tuple[list[float], float]]:
    """Probability sequences of 1-8 steps with thresholds, including exact ties and no crossing."""
    rng = random.Random(HALT_CASES_SEED)
    cases = []
    for i in range(HALT_CASES):
        n = rng.randint(1, 8)
        threshold = round(rng.choice([0.3, 0.5, 0.62, 0.8, 0.9, 0.97]), 2)
        p = [round(rng.random(), 2) for _ in range(n)]
        if i % 5 == 0:  # a probability exactly at the threshold: not above it
            p[rng.randrange(n)] = threshold
        if i % 7 == 0:  # never above the threshold
            p = [min(x, threshold) for x in p]
        cases.append((p, threshold))
    return cases


def _digest(i: int, answer: object) -> str:
    return hashlib.sha256(f"{i}:{answer!r}".encode()).hexdigest()


@contextlib.contextmanager
def _library_blocked() -> Iterator[None]:
    """While the student's function runs, the library's halting rule raises instead of answering."""
    from course_lib.act import analysis, halting

    def blocked(*args, **kwargs):
        raise RuntimeError("write the rule yourself: the check blocks course_lib's halting functions")

    saved = {(m, n): getattr(m, n) for m, n in ((analysis, "halting_steps"), (analysis, "replay"),
                                                (analysis, "rule_steps"), (halting, "halt_now"))}
    try:
        for (m, n) in saved:
            setattr(m, n, blocked)
        yield
    finally:
        for (m, n), f in saved.items():
            setattr(m, n, f)


def check_halt_step(fn: Callable[[list[float], float], int]) -> tuple[bool, str, str]:
    """(ok, why right, why wrong) for a function (p, threshold) -> 1-based halting step."""
    cases = halt_step_cases()
    with _library_blocked():
        answers = [fn(list(p), t) for p, t in cases]
    for i, ((p, t), a) in enumerate(zip(cases, answers, strict=True)):
        if isinstance(a, bool) or not isinstance(a, int):
            return False, "", f"return an int (the 1-based step), got {type(a).__name__} for p = {p}"
        if _digest(i, a) != _HALT_HASHES[i]:
            return (False, "", f"for p = {p} and threshold {t} your function returned {a}; "
                    "re-read the rule: the first step whose p is strictly above the threshold, else the last step")
    return True, f"your rule gives the right step on all {len(cases)} hidden cases (ties and no-crossing included)", ""


def measure_forced_cost(batch_size: int, max_steps: int) -> tuple[int, int]:
    """(network calls, rows computed over all calls) of one forced run, counted on a small random reasoner."""
    from course_lib.act import puzzles as P
    from course_lib.act.halting import run_forced
    from course_lib.act.loss import ACTLossHead
    from course_lib.act.model import ACTReasoner

    torch.manual_seed(0)
    model = ACTReasoner({"hidden_size": 16, "num_heads": 2, "halt_max_steps": max_steps}).eval()
    counts = {"calls": 0, "rows": 0}

    def count(module, args):
        counts["calls"] += 1
        counts["rows"] += len(args[1])  # inner(carry, inputs): one row per puzzle in the call

    hook = model.inner.register_forward_pre_hook(count)
    try:
        x = torch.randint(0, P.VOCAB_SIZE, (batch_size, P.SEQ_LEN))
        run_forced(ACTLossHead(model).eval(), {"inputs": x, "labels": x, "puzzle_identifiers": torch.zeros(batch_size, dtype=torch.long)})
    finally:
        hook.remove()
    return counts["calls"], counts["rows"]


def check_forced_cost(fn: Callable[[int, int], tuple[int, int]]) -> tuple[bool, str, str]:
    """Compare fn(batch_size, max_steps) -> (calls, rows) with a measured forced run on hidden sizes."""
    rng = random.Random(HALT_CASES_SEED + 1)
    sizes = [(rng.randint(3, 40), rng.randint(2, 9)) for _ in range(3)]
    for b, s in sizes:
        got = fn(b, s)
        want = measure_forced_cost(b, s)
        if tuple(got) != want:
            return (False, "", f"for a batch of {b} puzzles with halt_max_steps = {s} you said {tuple(got)}; "
                    "count what a forced run really does: how many times the network is called, and how many rows each call computes")
    return True, f"matches a measured forced run on {len(sizes)} batch sizes and step budgets you did not see", ""


_HALT_HASHES: list[str] = [  # sha256 of "case index:answer" per case of halt_step_cases(), from a reference run
    "ef134f2a180ba05de91ab32d2976f51de13b68d823ea784171b1b0dafee67be4",
    "d6b5915c46057bcb005f46f6433df65609dd3a7a57af75ac1a5a4a7c299ebffb",
    "4526fb2d82c604413eccf98545cc6fa5e6b201e5506530dcf86898a13c33d432",
    "59a5a0c7c39734d9c3359438fe114555c618f012aea84f3e4933246f7795575d",
    "d29b9bf02d7daea9b978633edbd91ab81309827e24e16e46f0f2b93f904573f1",
    "a5886f21fcb5f028633b8e8d7bba1412e9a18c1de1a696da1e0cf0244a9665d4",
    "aaf50d890710c4dc094f5e3be6901b29170cd13f8715d5df2e619a6538f02738",
    "111c309fc0cfd2b772a26b9c6f05c0e3b19eaa2ccf302881b9eed7faeab435f0",
    "7151e0199814368ae6f2eb698526c0babca5a32562a26edbc0617af3dcd50350",
    "30070e84b10bb5e37fa7461577ef62366933f554e562267b20015dc82d1238fa",
    "97c90213a2051f9ed92fe8e2dc76404f186726145c63e69db0c0723e283bd8d5",
    "500547957dcbeaff838fd062736656cdffbeed3cdd6adf92f5e37b838effe719",
    "351935bbcd2812eceda97494d51064abac73d936a9bc73e762ff9cb27164a670",
    "e489341ba5f387dfac0a1604f9eca9e9b7068e38d0cf2fdda37ff21d71bf0815",
    "aaf24d3ec8209fb9d92322fd78b9c1dacbc568d3d492d0a69cb150726ce9a446",
    "151b91c0042b996127cd7bb7b805fda9c1e295b51d0002f439615a9f878c2990",
    "3cbce04c8d68e32c5c6df633a8a009dcb363881a021ac16173602669a93c7eb0",
    "723b18f37c13ab46f1436ec784078479ddd5590dbd8c9cbb4bf1300cf6d4cc39",
    "e5b9978dd26fddcca5f06b77afdf18c9d1154856c476aec3be27922abdd77761",
    "7291f095530593a1ffe589de13b1c98ccb3540b9832dfdad72e0c4974ea41b82",
    "35030cb4214fbf48e90906ae02bb4d57e911edc49bda3e51249336f1fda65894",
    "11e060809d99681d094343800d1ed1d06af113b3ffef5f68a30f69e1990d0ffe",
    "6eadd69448a285e2fa8425eb4254b78aa6cda9cceb05eba81eba750a80beef36",
    "8775bb9a45599594f8cea48520b5d6a23a41ed82bced36c85c9b0ac310477f2b",
    "7db21be16a62bfd329fbc228569bfd4dac5b0a586d333ed4fd6a84eb38d0c437",
    "7abaa0d9fc93effd6eb336e8d03dfe214099771ea1713f6acf8f38e17be3dc4d",
    "2e2391de55e4a62855b174aa6c73e8758aab87fbacd0e03ddcee1becc7b8b05c",
    "4d41d5f77df13d5cbedbf2663d791656a1ef1cc72bf260894c2b70299b0e433f",
    "e8d2c914a4382df5b440f404500025cea2c7c8728b1271b7f4b13b5ffa6f84d7",
    "bb41d1c54aa2fd7f59e8a80a1c1a798a0e870ab326947e1495eb0dc222493fb9",
    "e0406996a77dfdb4cd2ff8169d6468a728c31088d2b6a0595b0235a6a5721972",
    "db022c90d3cd8fa1219d22494cfd9a6cd87a5b3f1a3a772a81b5adc725b17240",
    "16af68d7bcc70ebade7fe0f3985e18344b159e8804a43979f59edcb93549a02d",
    "87a7c0b534130c05795e3fdfadf69f05d066eb9bf13dd708522a8c1043b75d89",
    "4b264559dca6ee6edc49663816ecaecc3e2062a724dba07d557c8a6134c383ab",
    "188baa4685370372e47a444c143d3e71613fcc832e0fbf5bef2c941089d4a1b2",
    "6c076eb2c88f8cedd21c08fc6be62c4ccf9707707adabdb846b85b121c514c15",
    "785ba3c329d988cf0ea95bc9b3c66052f9244073d0f3b7a6dd686ac9abc9919b",
    "27fea0f073734f97d8d25202fee289a4abd6721cd493f56d5543425452e884e1",
    "0d2a0ecf67d4689a7e96c18a2c13b07bb9509bc68ec377bae099d3e0493eb0a8",
    "462803ada59a1d439cfd0e6e24e964bcecdec8e8b83bce02147db06f66cdfadb",
    "fea0e0e5eb572aec3763c4b9eea0d708db240d8649cf676bb441e3c27586099e",
    "57bc54311f66a04a3b0103feef0c57434e99ee85a377b4616ec93d6cce65c59d",
    "aa6c117bb686e2bd2e81a6b582c54e7fc05008beb55aab848280bb7a5fdf3b97",
    "0abadd4e9599989696736288b9c96e65de431b0aa1cc709c149897ae2b1f497a",
    "241d3462c656d492137752977e3a1ba662d8a26e8b1e45c7c90010411208fcf1",
    "517d3d94059d6512eb9a8add76cc292fd2e96c11454b8b326c8cfd97b0c6202e",
    "acd3092bb4c017b1ed33c7c5af49df89d1a4a687e1810d4dd79ce6532f9f8767",
    "f248e3e27d653a911b348811bb86852132870664bfe196e36980434e239a8096",
    "005b0cad4569f4c47bc2b83aaffec35a954b8bafb23baef2d0645213b3f1b7a6",
    "389147a87186fe3d72d81c2c0f97619d264855c110d839d9aa533606b9bf9088",
    "497621816b5aafb35fb8ff2542b2b429f2efd5004e99bce070b6430fddb7af2f",
    "25ac81ae860053b3fbe06ad11e9baed5c10603d5c1841b810aaa1ec196c1422f",
    "84e1e3acbee67bc7553b37eabc60ea59b10b603d64ee662b0d23283273556ebd",
    "902211faecd5148ee4d0653379a3f7368f41fe9a7f17a4746bab0331c46d16e4",
    "cf64fbc81ad14877837a484d4198add0c9e29d4b03ea89c342fe51e67ce9ea83",
    "cb76c3465ecc7c27359c6b09a4373d16b35c1d26dbf97699ea4f966a8a51963d",
    "769f666d1c275f408bbcd3756e7f9ff685e502cab9b7870e6a6b603c1ce5561c",
    "9e2b15ca75e98e999495e62f535ef4f2691009cda6afbbca4b6e565906dcb4e3",
    "d8c9af257af2a1b0f7987595634063ed20d9af1c39829434be861a393c4a8f03",
]
