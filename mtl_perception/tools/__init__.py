"""Command-line tools: replay, bag-from-video, eval-bag, demo (console scripts)."""
