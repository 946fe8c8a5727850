"""``python -m lamra.demo``: ``make demo`` (see :mod:`lamra.demo.show.show`)."""

from lamra.demo.show.show import main

if __name__ == "__main__":
    main()
