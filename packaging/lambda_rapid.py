"""Entry point of the self-contained lambda-rapid executable (see packaging/build-executable)."""

from lambdarapid.scripts import rapid

if __name__ == "__main__":
    rapid()
