// The pack's example workflows in Templates, in a fixed order with the main job first. ComfyUI 0.3.75 lists a
// pack's example_workflows/*.json in directory order (app/custom_node_manager.py, an unsorted glob) and frontends
// 1.32.9 and 1.58.1 show them in that order; a title and a description exist only as the file name there, so
// each thumbnail carries its own caption (scripts/snapshot_workflows.py).
import { app } from "../../../scripts/app.js";
import { api } from "../../../scripts/api.js";

export const TEMPLATE_ORDER = [
  "demo_move", "chained", "move", "resize", "appearance", "paste", "drag", "gooddrag", "dragdiffusion", "reconstruct",
];

// The folder this pack is installed under (its name in Templates): /extensions/<folder>/js/templates.js.
const PACK_FOLDER = decodeURIComponent(new URL(import.meta.url).pathname.split("/").at(-3));

function rank(name) {
  const at = TEMPLATE_ORDER.indexOf(name);
  return at < 0 ? TEMPLATE_ORDER.length : at;
}

app.registerExtension({
  name: "DragEdit.Templates",
  setup() {
    const original = api.getWorkflowTemplates?.bind(api);
    if (!original) return;
    api.getWorkflowTemplates = async (...args) => {
      const templates = await original(...args);
      const ours = templates?.[PACK_FOLDER];
      if (Array.isArray(ours)) templates[PACK_FOLDER] = [...ours].sort((a, b) => rank(a) - rank(b) || a.localeCompare(b));
      return templates;
    };
  },
});
