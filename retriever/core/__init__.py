"""What every stage shares: errors, settings, the cache, progress, threads, and the
generation folders an index is published in."""
