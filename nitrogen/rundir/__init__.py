"""Run folders and what goes in them: videos (video), the debug frame (overlay), the run folder
itself (run_folder) and the plots (plots, which need matplotlib only when a plot is drawn)."""

from .overlay import DebugLayout, debug_frame, debug_layout
from .plots import ScoreRow, eval_chart, plot_curves
from .run_folder import RunRecorder, new_run_dir
from .video import VideoWriter

__all__ = [
    "DebugLayout",
    "RunRecorder",
    "ScoreRow",
    "VideoWriter",
    "debug_frame",
    "debug_layout",
    "eval_chart",
    "new_run_dir",
    "plot_curves",
]
