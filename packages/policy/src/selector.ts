/**
 * Kubernetes label selector matching (apimachinery `metav1.LabelSelectorAsSelector`): every
 * matchLabels pair and every matchExpression must hold; an empty selector matches everything.
 */
import type { LabelSelector } from "./model.js";

/** Whether `labels` satisfy `selector` (absent selector: everything). */
export function matchesSelector(selector: LabelSelector | undefined, labels: Readonly<Record<string, string>>): boolean {
  if (!selector) return true;
  for (const [k, v] of Object.entries(selector.matchLabels ?? {})) if (labels[k] !== v) return false;
  for (const e of selector.matchExpressions ?? []) {
    const has = Object.hasOwn(labels, e.key);
    switch (e.operator) {
      case "In":
        if (!has || !e.values!.includes(labels[e.key]!)) return false;
        break;
      case "NotIn":
        // As in Kubernetes: a missing key satisfies NotIn.
        if (has && e.values!.includes(labels[e.key]!)) return false;
        break;
      case "Exists":
        if (!has) return false;
        break;
      case "DoesNotExist":
        if (has) return false;
        break;
    }
  }
  return true;
}
