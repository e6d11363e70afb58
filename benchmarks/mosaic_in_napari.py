"""Peak RSS and the longest event-loop gap of napari + the Segment widget on the 8192x8192
mosaic sample (precision auto), as a user would run it:

    xvfb-run -a python benchmarks/mosaic_in_napari.py
"""

import json
import resource
import time

import napari
from qtpy.QtWidgets import QApplication

from napari_tiled_unet._qt.predict_widget import SegmentWidget
from napari_tiled_unet._sample_data import sample_mosaic

v = napari.Viewer(show=True)
data, kw, _ = sample_mosaic()[0]
v.add_image(data, **kw)
w = SegmentWidget(v)
v.window.add_dock_widget(w)
w.device_combo.setCurrentText("cpu")
app = QApplication.instance()
t0 = time.monotonic()
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
gaps, last = [], time.perf_counter()
at = []
t0p = time.perf_counter()
w.run_button.click()
while w.busy:
    app.processEvents()
    now = time.perf_counter()
    gaps.append(now - last)
    at.append(now - t0p)
    last = now
    time.sleep(0.01)
for _ in range(50):
    app.processEvents()
    time.sleep(0.01)
print(json.dumps({"status": w.status.text(), "seconds": round(time.monotonic() - t0, 1),
                  "peak_rss_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6,
                  "rss_before_run_gb": before / 1e6, "max_gap_s": round(max(gaps), 3),
                  "max_gap_ends_at_s": round(at[gaps.index(max(gaps))], 1),
                  "layers": [layer.name for layer in v.layers],
                  "display_steps": [(n, round(t, 3), round(c, 3)) for n, t, c in w.step_times]}))
v.close()
