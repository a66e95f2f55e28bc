"""Board-game ground truth: Othello and chess games with known board states, small GPT-2 models
trained on them (shipped under ``pretrained/``), board-state properties, activations and the
Othello demo. The metrics live in :mod:`saelab.evals.boardgame`; see docs/boardgame.md.

Submodules are imported on use: ``from saelab.boardgame import othello, lm``.
"""
