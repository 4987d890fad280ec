import asyncio
import random
import re
from collections import defaultdict


class PythonPredictor:
    """Streams words from a Markov chain of the corpus's word pairs; `async def` so waits cost no thread."""

    def __init__(self, config):
        with open(config["corpus"], encoding="utf-8") as corpus:
            words = re.findall(r"[\w']+|[.,]", corpus.read())
        self.next_words = defaultdict(list)
        for first, second, third in zip(words, words[1:], words[2:], strict=False):
            self.next_words[(first, second)].append(third)
        self.pause = config["seconds_per_word"]

    async def predict(self, payload):
        """{"prompt": "the river", "words": 20, "seed": 1} → the prompt's continuation, a word at a time."""
        chooser = random.Random(payload.get("seed"))
        state = tuple(payload.get("prompt", "the river").split()[-2:])
        if state not in self.next_words:
            state = chooser.choice(list(self.next_words))
        for _ in range(payload.get("words", 20)):
            candidates = self.next_words.get(state) or self.next_words[chooser.choice(list(self.next_words))]
            word = chooser.choice(candidates)
            await asyncio.sleep(self.pause)
            yield word if word in ".," else " " + word
            state = (state[1], word)
