"""Time to first token of a multi-turn chat with the prefix cache on and off, side by side, in-process.

A system prompt of about --system-tokens tokens, then --turns user turns, each sent with the whole
history so far (the system prompt, the earlier turns and the model's answers), as a chat client sends
them. Each turn's time to first token is one generate() call of max_tokens=1 on that history; its
answer (--answer-tokens, greedy) joins the history. With the cache, turn 1 is cold (the system prompt
is computed) and every later turn finds the history in the cache; without it, every turn computes the
whole history. The answers must be the same either way.

Usage: python benchmarks/prefix_cache_ttft.py [--model default] [--system-tokens 1000] [--turns 4]
                                              [--answer-tokens 32] [--device auto]
"""

from __future__ import annotations

import argparse
import time

from splitspec import LLM, SamplingParams

TOPICS = ("rivers", "mountains", "deserts", "forests", "oceans", "islands", "lakes", "volcanoes")


def system_prompt(llm: LLM, tokens: int) -> str:
    """Rules of a made-up support desk, repeated with numbered variations up to `tokens` tokens."""
    lines, i = ["You are the assistant of a geography help desk. Follow every rule below."], 0
    while len(llm.tokenizer.encode("\n".join(lines))) < tokens:
        topic = TOPICS[i % len(TOPICS)]
        lines.append(f"Rule {i + 1}: when asked about {topic}, name two examples and one fact about each, briefly.")
        i += 1
    return "\n".join(lines)


def run(llm: LLM, system: str, turns: int, answer_tokens: int) -> tuple[list[float], list[list[int]], list[int]]:
    """Per turn: seconds to the first token, the answer's tokens, and the history's length in tokens."""
    messages = [{"role": "system", "content": system}]
    ttft, answers, lengths = [], [], []
    for turn in range(turns):
        messages.append({"role": "user", "content": f"Tell me about {TOPICS[turn % len(TOPICS)]}."})
        prompt = llm.apply_chat_template(messages)
        lengths.append(len(llm.tokenizer.encode(prompt)))
        started = time.perf_counter()
        llm.generate(prompt, SamplingParams(temperature=0, max_tokens=1), use_tqdm=False)
        ttft.append(time.perf_counter() - started)
        answer = llm.generate(prompt, SamplingParams(temperature=0, max_tokens=answer_tokens), use_tqdm=False)[0]
        answers.append(answer.outputs[0].token_ids)
        messages.append({"role": "assistant", "content": answer.outputs[0].text})
    return ttft, answers, lengths


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="default")
    parser.add_argument("--system-tokens", type=int, default=1000)
    parser.add_argument("--turns", type=int, default=4)
    parser.add_argument("--answer-tokens", type=int, default=32)
    parser.add_argument("--device", default="auto")
    args = parser.parse_args()
    results = {}
    for cached in (False, True):
        llm = LLM(args.model, device=args.device, enable_prefix_caching=cached)
        system = system_prompt(llm, args.system_tokens)
        warm_up = " ".join(reversed(system.split()))  # as long, and sharing no block with it
        llm.generate(warm_up, SamplingParams(max_tokens=2), use_tqdm=False)
        results[cached] = run(llm, system, args.turns, args.answer_tokens)
        del llm
    (off, off_answers, lengths), (on, on_answers, _) = results[False], results[True]
    print(f"{'turn':>4} {'history tokens':>14} {'TTFT cache off ms':>18} {'TTFT cache on ms':>17} {'speedup':>8}")
    for turn, (tokens, a, b) in enumerate(zip(lengths, off, on), start=1):
        print(f"{turn:>4} {tokens:>14} {a * 1e3:>18.0f} {b * 1e3:>17.0f} {a / b:>7.2f}x")
    print(f"answers identical with and without the cache: {off_answers == on_answers}")


if __name__ == "__main__":
    main()
