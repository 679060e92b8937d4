"""What the tests share: independent references, builders of contract files, CLI runners."""
