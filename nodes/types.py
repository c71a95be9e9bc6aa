"""The pack's socket types, declared once. Each carries a frozen payload defined in kernels/ (style.md §4.3).

The DRAG_ prefix keeps these sockets from connecting to another pack's "POINTS" or "MEMORY_BANK".
"""
from comfy_api.latest import io

DragPoints = io.Custom("DRAG_POINTS")              # kernels.points.DragPoints
MemoryBank = io.Custom("DRAG_MEMORY_BANK")         # kernels.memory_bank.MemoryBank
Features = io.Custom("DRAG_FEATURES")              # kernels.features.FeatureTap
Guidance = io.Custom("DRAG_GUIDANCE")              # kernels.energy.EnergyGuidance
Tracker = io.Custom("DRAG_TRACKER")                # kernels.tracker.TrackerSpec
Motion = io.Custom("DRAG_MOTION")                  # kernels.motion.MotionSupervision
ImagePromptModel = io.Custom("DRAG_IP_ADAPTER")    # kernels.image_prompt.ImagePromptModel
ImagePrompt = io.Custom("DRAG_IMAGE_PROMPT")       # kernels.image_prompt.ImagePrompt
