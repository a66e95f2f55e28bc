"""Board-game ground truth: Othello and chess games with known board states, small GPT-2 models
trained on them (shipped under ``pretrained/``), board-state properties and activations.
The metrics live in :mod:`saelab.evals.boardgame`; see docs/boardgame.md. The Othello
demo pipeline lives in :mod:`saelab.pipelines.boardgame_demo`.

Submodules are imported on use: ``from saelab.boardgame import othello, lm``.
"""
