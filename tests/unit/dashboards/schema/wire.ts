// Wire<T>: the JSON (on-the-wire) form of a @grafana/schema type.
//
// The schema's generated TypeScript models some closed string sets as TS string enums
// (e.g. ThresholdsMode.Absolute = 'absolute'). A string enum is nominal in TypeScript: the JSON
// value "absolute" is not assignable to it, although it is exactly what Grafana writes and reads.
// Wire<T> replaces every string enum by the union of its values (`${ThresholdsMode}` =
// 'absolute' | 'percentage') and leaves everything else as the schema says: string literal
// unions stay closed, `string` stays `string`, numeric enums stay (a numeric literal that is a
// member value is assignable to a numeric enum), objects keep their keys, optionality and
// index signatures, so excess-property checks still apply. `any` stays `any`.
type IsAny<T> = 0 extends 1 & T ? true : false;

export type Wire<T> =
  IsAny<T> extends true
    ? T
    : T extends string
      ? `${T}`
      : T extends ReadonlyArray<infer U>
        ? Array<Wire<U>>
        : T extends object
          ? { [K in keyof T]: Wire<T[K]> }
          : T;
