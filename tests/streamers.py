"""A recording stand-in for transformers' streamer interface (``put`` / ``end``), for the tests of ``streamer=``."""


class Recorder:
    def __init__(self):
        self.puts, self.ended = [], 0

    def put(self, value):
        assert not self.ended, "put after end"
        self.puts.append(value.clone())

    def end(self):
        self.ended += 1
