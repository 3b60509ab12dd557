"""What comes in and when: settling, the queue, the retry policy."""
