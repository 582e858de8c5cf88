"""Secrets and personal data found by the libraries' pattern detectors; duplicates and test leaks by curation's checks."""

from llamaduo.capture.hygiene import Scrubber, drop_duplicates
from llamaduo.config import CurateParams


def test_each_kind_is_found_redacted_and_counted():
    s = Scrubber(["api_key", "email", "phone", "card"], ["US"])
    text = ("Key AKIAIOSFODNN7EXAMPLE, mail ann@example.com, call +1 415-555-0132 or (212) 555-0199, "
            "card 4111 1111 1111 1111, order 4111 1111 1111 1112, version 1.2.3 on 2024-01-05.")
    out, counts = s.redact(text)
    assert out == ("Key <API_KEY>, mail <EMAIL>, call <PHONE> or <PHONE>, card <CARD>, order 4111 1111 1111 1112, "
                   "version 1.2.3 on 2024-01-05.")  # a number failing the Luhn check is not a card
    assert counts == {"api_key": 1, "email": 1, "phone": 2, "card": 1}
    assert Scrubber(["email"], ["US"]).redact(text)[1] == {"email": 1}  # only the kinds asked for


def _pair(i, instruction, response):
    return {"id": f"r{i}", "task": "t", "instruction": instruction, "response": response, "system": None, "history": None,
            "category": "t"}


def test_duplicates_of_held_rows_and_test_leaks_are_dropped_with_curations_reasons():
    held = [_pair(0, "Summarize the quarterly report on revenue growth and costs in the northern region for the board",
                  "Revenue grew twelve percent while costs fell in the north."),
            _pair(1, "Explain how photosynthesis turns sunlight, water and carbon dioxide into sugar and oxygen in plants",
                  "Plants use light to make sugar from water and CO2, releasing oxygen.")]
    new = [_pair(10, held[0]["instruction"], held[0]["response"]),
           _pair(11, held[0]["instruction"] + " please", held[0]["response"]),
           _pair(12, held[1]["instruction"], held[1]["response"]),
           _pair(13, "Write a haiku about the sea at night under a full moon", "Dark waves hum softly, moonlight on the foam."),
           _pair(14, "Write a haiku about the sea at night under a full moon", "Dark waves hum softly, moonlight on the foam.")]
    kept, reasons = drop_duplicates(new, held=held[:1], test=held[1:], curate_params=CurateParams())
    assert [r["id"] for r in kept] == ["r13"] and "cycle" not in kept[0]
    assert reasons == {"r10": "exact_duplicate_train", "r11": "near_duplicate_train", "r12": "test_contamination_exact",
                       "r14": "exact_duplicate"}
