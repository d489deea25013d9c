// Reads a JSON array of ServiceMonitor / PrometheusRule resources on stdin and validates each
// against the prometheus-operator CRD schemas (kubernetes-models' compiled validators).
// Prints one line per resource ("ok KIND NAME" or "invalid KIND NAME: why"); exit 1 if any
// is invalid or of another kind.
import { readFileSync } from "node:fs";
import { PrometheusRule } from "@kubernetes-models/prometheus-operator/monitoring.coreos.com/v1/PrometheusRule";
import { ServiceMonitor } from "@kubernetes-models/prometheus-operator/monitoring.coreos.com/v1/ServiceMonitor";

const kinds = { PrometheusRule, ServiceMonitor };
let bad = 0;
for (const doc of JSON.parse(readFileSync(0, "utf8"))) {
  const name = `${doc.kind} ${doc.metadata?.name}`;
  const Kind = kinds[doc.kind];
  if (!Kind) {
    bad++;
    console.log(`invalid ${name}: not a kind this validator knows`);
    continue;
  }
  try {
    new Kind(doc).validate();
    console.log(`ok ${name}`);
  } catch (err) {
    bad++;
    console.log(`invalid ${name}: ${err.message}`);
  }
}
process.exit(bad ? 1 : 0);
