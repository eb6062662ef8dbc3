import sys

import numpy as np

from leanify.measure import memory


def test_peak_follows_a_real_allocation():
    before = memory.current_rss_mb()
    block = np.ones(200 * 2**20 // 8)  # 200 MB, touched
    assert memory.current_rss_mb() - before > 150
    peak_with_block = memory.peak_rss_mb()
    del block
    assert memory.peak_rss_mb() >= peak_with_block - 1  # the peak remembers
    linux = sys.platform.startswith("linux")
    assert memory.reset_peak() == linux  # Linux >= 4.0 can reset the peak; elsewhere it says no
    if linux:  # the reset brings the peak back to what is resident now
        assert memory.peak_rss_mb() < peak_with_block - 150


def test_bare_interpreter_is_small_and_measured_in_another_process():
    bare = memory.bare_interpreter_rss_mb()
    assert 3 < bare < 150
    assert bare < memory.current_rss_mb()
