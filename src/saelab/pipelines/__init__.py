"""End-to-end pipelines that chain the layers below them (data → training → evaluations →
feature store), e.g. the Othello demo behind ``saelab demo``. Nothing below imports from here."""
