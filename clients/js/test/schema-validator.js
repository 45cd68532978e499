// A small JSON Schema (draft 2020-12) validator for the keywords that
// schema/frames.schema.json uses, so the SDK stays dependency-free. It
// refuses a schema with any other keyword instead of ignoring it, so the
// schema cannot grow a rule these tests silently skip. The broker's own test
// (tests/frame_schemas.rs) checks the same file with a full validator.

const KNOWN = new Set([
  "$schema", "$id", "$defs", "$ref", "title", "description",
  "type", "const", "enum", "properties", "required", "additionalProperties",
  "oneOf", "anyOf", "minLength", "maxLength", "pattern", "minimum", "maximum",
]);

const typeOf = (v) => {
  if (v === null) return "null";
  if (Array.isArray(v)) return "array";
  if (typeof v === "number") return Number.isInteger(v) ? "integer" : "number";
  return typeof v; // string, boolean, object
};

const hasType = (v, t) => typeOf(v) === t || (t === "number" && typeOf(v) === "integer");

/** Throws if `schema` (or any schema inside it) uses a keyword this validator lacks. */
export function assertSupported(schema, path = "#") {
  if (typeof schema !== "object" || schema === null) return;
  for (const [k, v] of Object.entries(schema)) {
    if (!KNOWN.has(k)) throw new Error(`schema keyword ${k} at ${path} is not supported by this validator`);
    if (k === "$defs" || k === "properties") {
      for (const [name, sub] of Object.entries(v)) assertSupported(sub, `${path}/${k}/${name}`);
    } else if (k === "oneOf" || k === "anyOf") {
      v.forEach((sub, i) => assertSupported(sub, `${path}/${k}/${i}`));
    } else if (k === "additionalProperties" && typeof v === "object") {
      assertSupported(v, `${path}/${k}`);
    }
  }
}

/**
 * The errors of `value` against `schema` (inside `root`, for "#/..." refs):
 * an empty array when valid.
 */
export function validate(root, value, schema = root, at = "") {
  const errors = [];
  const fail = (msg) => errors.push(`${at || "/"}: ${msg}`);
  if (schema.$ref !== undefined) {
    if (!schema.$ref.startsWith("#")) throw new Error(`only local $refs are supported: ${schema.$ref}`);
    const target = schema.$ref.slice(1).split("/").filter(Boolean)
      .reduce((s, part) => s?.[part.replace(/~1/g, "/").replace(/~0/g, "~")], root);
    if (target === undefined) throw new Error(`$ref ${schema.$ref} points nowhere`);
    errors.push(...validate(root, value, target, at));
  }
  if (schema.type !== undefined) {
    const types = Array.isArray(schema.type) ? schema.type : [schema.type];
    if (!types.some((t) => hasType(value, t))) fail(`is ${typeOf(value)}, expected ${types.join(" or ")}`);
  }
  if ("const" in schema && JSON.stringify(value) !== JSON.stringify(schema.const)) {
    fail(`must be ${JSON.stringify(schema.const)}`);
  }
  if (schema.enum !== undefined && !schema.enum.some((e) => JSON.stringify(e) === JSON.stringify(value))) {
    fail(`${JSON.stringify(value)} is not one of ${JSON.stringify(schema.enum)}`);
  }
  if (typeof value === "string") {
    const len = [...value].length; // code points, as JSON Schema counts
    if (schema.minLength !== undefined && len < schema.minLength) fail(`shorter than ${schema.minLength}`);
    if (schema.maxLength !== undefined && len > schema.maxLength) fail(`longer than ${schema.maxLength}`);
    if (schema.pattern !== undefined && !new RegExp(schema.pattern, "u").test(value)) {
      fail(`does not match ${schema.pattern}`);
    }
  }
  if (typeof value === "number" && schema.minimum !== undefined && value < schema.minimum) {
    fail(`less than ${schema.minimum}`);
  }
  if (typeof value === "number" && schema.maximum !== undefined && value > schema.maximum) {
    fail(`more than ${schema.maximum}`);
  }
  if (typeOf(value) === "object") {
    const props = schema.properties ?? {};
    for (const name of schema.required ?? []) {
      if (!(name in value)) fail(`missing ${name}`);
    }
    for (const [name, v] of Object.entries(value)) {
      if (name in props) errors.push(...validate(root, v, props[name], `${at}/${name}`));
      else if (schema.additionalProperties === false) fail(`unexpected field ${name}`);
      else if (typeof schema.additionalProperties === "object") {
        errors.push(...validate(root, v, schema.additionalProperties, `${at}/${name}`));
      }
    }
  }
  if (schema.anyOf !== undefined) {
    const each = schema.anyOf.map((s) => validate(root, value, s, at));
    if (!each.some((e) => e.length === 0)) fail(`matches none of anyOf: ${each.flat().join("; ")}`);
  }
  if (schema.oneOf !== undefined) {
    const each = schema.oneOf.map((s) => validate(root, value, s, at));
    const ok = each.filter((e) => e.length === 0).length;
    if (ok !== 1) fail(ok === 0 ? `matches none of oneOf: ${each.flat().join("; ")}` : `matches ${ok} of oneOf`);
  }
  return errors;
}
