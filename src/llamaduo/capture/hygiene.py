"""Hygiene of captured rows before they are written: secrets and personal data, and duplicates of what the task holds.

Secrets and personal data are found offline by libraries' own pattern detectors, nothing is sent anywhere:
- `api_key`: detect-secrets' vendor key plugins (OpenAI, AWS, GitHub, Stripe, Slack, ...); its entropy and keyword
  plugins are left out, since ordinary text (hashes, ids, "password" in prose) trips them;
- `email`, `phone`, `card`: presidio-analyzer's pattern recognizers (card numbers pass the Luhn check, phone numbers
  are parsed by Google's libphonenumber for `phone_regions`). presidio's NLP engine is never built, so no spaCy model
  is needed; the e-mail recognizer checks the domain against tldextract's bundled suffix list, never a download.

Duplicates are curation's own checks (`llamaduo.curation.curate`: exact, MinHash LSH + ROUGE-L near duplicates, and
decontamination against the task's test rows), with curation's quality rules switched off: a captured row is a
person's choice, not synthetic output to screen.
"""

from __future__ import annotations

import contextlib
from collections import Counter
from functools import cache

KINDS = ("api_key", "email", "phone", "card")
_PRESIDIO = {"EMAIL_ADDRESS": "email", "PHONE_NUMBER": "phone", "CREDIT_CARD": "card"}
# detect-secrets plugins left out: they flag ordinary text, not a credential of a named service
_NOISY = {"Base64HighEntropyString", "HexHighEntropyString", "KeywordDetector", "IPPublicDetector"}


@cache
def _secret_plugins() -> tuple[dict, ...]:
    from detect_secrets.core.plugins.util import get_mapping_from_secret_type_to_class

    return tuple({"name": c.__name__} for c in get_mapping_from_secret_type_to_class().values() if c.__name__ not in _NOISY)


@cache
def _recognizers(kinds: tuple[str, ...], regions: tuple[str, ...]) -> tuple:
    import tldextract
    from presidio_analyzer.predefined_recognizers import CreditCardRecognizer, EmailRecognizer, PhoneRecognizer

    # suffix_list_urls=(): tldextract's bundled public suffix list only (its default fetches one from the internet)
    offline = tldextract.TLDExtract(suffix_list_urls=(), cache_dir=None)

    class OfflineEmail(EmailRecognizer):
        def validate_result(self, pattern_text: str):
            return offline(pattern_text).fqdn != ""

    made = {"email": OfflineEmail, "phone": lambda: PhoneRecognizer(supported_regions=regions), "card": CreditCardRecognizer}
    return tuple(made[k]() for k in kinds if k in made)


class Scrubber:
    """Finds and redacts `kinds` in text: each finding becomes `<KIND>` (e.g. `<EMAIL>`)."""

    def __init__(self, kinds: list[str], phone_regions: list[str]):
        self.kinds = tuple(kinds)
        self.recognizers = _recognizers(self.kinds, tuple(phone_regions))
        self._active = False

    @contextlib.contextmanager
    def active(self):
        """detect-secrets' plugin choice in force for a whole run: setting it per text costs as much as the scan."""
        from detect_secrets.settings import transient_settings

        with transient_settings({"plugins_used": list(_secret_plugins())}):
            self._active = True
            try:
                yield self
            finally:
                self._active = False

    def findings(self, text: str) -> list[tuple[int, int, str]]:
        if "api_key" in self.kinds and not self._active:
            with self.active():
                return self.findings(text)
        found = []
        if "api_key" in self.kinds:
            from detect_secrets.core.scan import scan_line

            for secret in {s.secret_value for line in text.split("\n") for s in scan_line(line) if s.secret_value}:
                start = text.find(secret)
                while start >= 0:
                    found.append((start, start + len(secret), "api_key"))
                    start = text.find(secret, start + len(secret))
        for r in self.recognizers:
            found += [(x.start, x.end, _PRESIDIO[x.entity_type]) for x in r.analyze(text, r.supported_entities, None)]
        return found

    def redact(self, text: str) -> tuple[str, Counter]:
        """The text with every finding replaced (overlaps merged, the first kind named), and the count by kind."""
        spans = sorted(self.findings(text))
        counts, out, at = Counter(), [], 0
        for start, end, kind in spans:
            if start < at:  # overlaps one already replaced
                continue
            out += [text[at:start], f"<{kind.upper()}>"]
            counts[kind] += 1
            at = end
        out.append(text[at:])
        return "".join(out), counts


def scrub_messages(messages: list[dict], scrubber: Scrubber) -> tuple[list[dict], Counter]:
    counts, out = Counter(), []
    for m in messages:
        text, c = scrubber.redact(m["content"])
        counts += c
        out.append({**m, "content": text})
    return out, counts


def dedup_params(curate_params):
    """Curation's params with its quality rules off: only its duplicate and test-leak checks run."""
    return curate_params.model_copy(update={
        "min_instruction_tokens": 0, "min_response_tokens": 0, "max_instruction_tokens": 2**31 - 1,
        "max_response_tokens": 2**31 - 1, "copy_ratio": None, "refusal_openers": [], "refusal_declines": [],
        "leftover_markup": False, "min_stopword_ratio": None, "max_coverage_drop": 1.0})


def drop_duplicates(rows: list[dict], *, held: list[dict], test: list[dict], curate_params) -> tuple[list[dict], dict]:
    """(the rows kept, {row id: reason}) after curation's exact and near duplicate checks against `held` (what the
    task already holds) and earlier rows of `rows`, and its test-leak checks against `test`. Reasons are
    curation's names (`exact_duplicate_train` is a duplicate of a held row)."""
    from llamaduo.curation import curate

    if not rows:
        return [], {}
    kept, dropped, _ = curate([dict(r, cycle=0) for r in rows], train=held, test=test, p=dedup_params(curate_params))
    return [{k: v for k, v in r.items() if k != "cycle"} for r in kept], {r["id"]: r["reason"] for r in dropped}
