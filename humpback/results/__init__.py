"""What a run leaves to read and share: the curation report (`report`), the model and dataset cards
and their upload to the Hub (`publish`), `dvc plots` that render offline (`plots`), and headless
Chromium for screenshots and the tests that render pages (`browser`). Markup is in `templates/`."""
