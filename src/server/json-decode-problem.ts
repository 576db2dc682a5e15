/**
 * Where a proto3 JSON body fails to decode: @bufbuild/protobuf's fromJson error names the message type
 * and the field's type ("cannot decode enum xdpctl.v1.Protocol from JSON"), not where in the request
 * the bad value is. This finds the first field that does not decode by decoding one field at a time
 * with the library's own fromJson, descending into messages, list items and map entries, and names
 * it as the gRPC validation names fields: proto field names, `backends[0]`, `labels["key"]`.
 */
import { fromJson, type DescMessage, type JsonValue } from '@bufbuild/protobuf';

export interface JsonDecodeProblem {
  field: string;
  description: string;
}

const MAX_DESCRIPTION = 300;

function decodeError(desc: DescMessage, json: JsonValue): Error | undefined {
  try {
    fromJson(desc, json, { ignoreUnknownFields: false });
    return undefined;
  } catch (e) {
    return e instanceof Error ? e : new Error(String(e));
  }
}

function isObject(v: unknown): v is { [k: string]: JsonValue } {
  return typeof v === 'object' && v !== null && !Array.isArray(v);
}

/** The library's reason without its "cannot decode <type> from JSON: " prefixes. */
function reason(err: Error, field: DescMessage['fields'][number]): string {
  let text = (err.cause instanceof Error ? err.cause : err).message.replace(
    /^(cannot decode \S+ \S+ from JSON: )+/,
    '',
  );
  const en = field.enum;
  if (en && /^cannot decode enum /.test(err.message)) {
    text = `must be one of ${en.values.map((v) => v.name).join(', ')} (or its number), got ${text}`;
  }
  return text.length > MAX_DESCRIPTION ? `${text.slice(0, MAX_DESCRIPTION)}...` : text;
}

/** The first field of `json` that `desc` cannot decode, or undefined (then the body as a whole is bad). */
export function jsonDecodeProblem(desc: DescMessage, json: JsonValue, path = ''): JsonDecodeProblem | undefined {
  if (!isObject(json)) return undefined;
  for (const [key, value] of Object.entries(json)) {
    const field = desc.fields.find((f) => f.jsonName === key || f.name === key);
    const at = (name: string) => (path ? `${path}.${name}` : name);
    if (!field)
      return { field: at(JSON.stringify(key).slice(1, -1)), description: `no such field in ${desc.typeName}` };
    const err = decodeError(desc, { [key]: value });
    if (!err) continue;
    const here = at(field.name);
    if (field.fieldKind === 'message' && isObject(value)) {
      const inner = jsonDecodeProblem(field.message, value, here);
      if (inner) return inner;
    } else if (field.fieldKind === 'list' && Array.isArray(value)) {
      for (const [i, item] of value.entries()) {
        const itemErr = decodeError(desc, { [key]: [item] });
        if (!itemErr) continue;
        const inner =
          field.listKind === 'message' ? jsonDecodeProblem(field.message, item, `${here}[${i}]`) : undefined;
        return inner ?? { field: `${here}[${i}]`, description: reason(itemErr, field) };
      }
    } else if (field.fieldKind === 'map' && isObject(value)) {
      for (const [k, v] of Object.entries(value)) {
        const entryErr = decodeError(desc, { [key]: { [k]: v } });
        if (!entryErr) continue;
        const name = `${here}[${JSON.stringify(k)}]`;
        const inner = field.mapKind === 'message' ? jsonDecodeProblem(field.message, v, name) : undefined;
        return inner ?? { field: name, description: reason(entryErr, field) };
      }
    }
    return { field: here, description: reason(err, field) };
  }
  return undefined;
}
