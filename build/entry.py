"""Entry point of the frozen bbsd: the same `main` as the console script."""

from bbsd.cli import main

if __name__ == "__main__":
    main()
