"""Pure-torch kernels shared by the DragonDiffusion/DiffEditor and GoodDrag/DragDiffusion nodes; no host imports."""
