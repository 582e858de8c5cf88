"""Synthesis: new (instruction, response) pairs from the service LLM, each request seeded by one train pair,
requested until curation of them reaches `synth.volume` (a larger volume replays the cached prefix)."""

from llamaduo.synthesis.requests import PAIRS_SCHEMA, Plan, parse_pairs, plan_requests
from llamaduo.synthesis.run import requests_needed, synthesize

__all__ = ["PAIRS_SCHEMA", "Plan", "parse_pairs", "plan_requests", "requests_needed", "synthesize"]
