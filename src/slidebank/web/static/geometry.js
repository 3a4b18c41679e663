// GeoJSON geometries (level-0 pixels, as the API and QuPath store them) to and from Annotorious
// shapes (`{type, geometry}` selectors in the same image pixels). Shape types are Annotorious's
// ShapeType values. What Annotorious cannot edit faithfully (several points, several lines) is shown
// read-only, so an edit never turns one kind of geometry into another.

const round = (value) => Math.round(value * 100) / 100;
const point = ([x, y]) => [round(x), round(y)];

function bounds(points) {
  const xs = points.map((p) => p[0]);
  const ys = points.map((p) => p[1]);
  return { minX: Math.min(...xs), minY: Math.min(...ys), maxX: Math.max(...xs), maxY: Math.max(...ys) };
}

// GeoJSON repeats a ring's first position at its end; Annotorious does not.
const closed = (ring) => ring.length > 1 && ring[0][0] === ring.at(-1)[0] && ring[0][1] === ring.at(-1)[1];
const open = (ring) => (closed(ring) ? ring.slice(0, -1) : ring);
const close = (points) => [...points.map(point), point(points[0])];

function asRectangle(rings) {
  // An axis-aligned four-corner ring is edited as a rectangle (resize handles), saved as a polygon.
  if (rings.length !== 1) return null;
  const corners = open(rings[0]);
  if (corners.length !== 4) return null;
  const aligned = corners.every((c, i) => {
    const next = corners[(i + 1) % 4];
    return (c[0] === next[0]) !== (c[1] === next[1]);
  });
  if (!aligned) return null;
  const box = bounds(corners);
  if (box.maxX === box.minX || box.maxY === box.minY) return null;
  return {
    type: "RECTANGLE",
    geometry: { x: box.minX, y: box.minY, w: box.maxX - box.minX, h: box.maxY - box.minY, bounds: box },
  };
}

function multiPolygon(polygons) {
  // Annotorious's multipolygon has rings, so holes are drawn as holes.
  const elements = polygons.map((rings) => {
    const opened = rings.map(open);
    return { rings: opened.map((points) => ({ points })), bounds: bounds(opened[0]) };
  });
  return {
    type: "MULTIPOLYGON",
    geometry: { polygons: elements, bounds: bounds(elements.flatMap((e) => e.rings[0].points)) },
  };
}

function marker([x, y], radius) {
  // A point is drawn as a small disc whose radius (image pixels) the caller sets for the zoom.
  return {
    type: "ELLIPSE",
    geometry: {
      cx: x, cy: y, rx: radius, ry: radius,
      bounds: { minX: x - radius, minY: y - radius, maxX: x + radius, maxY: y + radius },
    },
  };
}

const square = ([x, y], r) => [[[x - r, y - r], [x + r, y - r], [x + r, y + r], [x - r, y + r]]];

function polyline(points) {
  return {
    type: "POLYLINE",
    geometry: { points: points.map((p) => ({ type: "CORNER", point: p })), closed: false, bounds: bounds(points) },
  };
}

/** The Annotorious shape for a GeoJSON geometry, or null for one it cannot show. */
export function toShape(geometry, markerRadius) {
  const c = geometry.coordinates;
  switch (geometry.type) {
    case "Polygon":
      if (!c.length || c[0].length < 4) return null;
      return asRectangle(c) || (c.length === 1
        ? { type: "POLYGON", geometry: { points: open(c[0]), bounds: bounds(c[0]) } }
        : multiPolygon([c]));
    case "MultiPolygon":
      return c.length ? multiPolygon(c) : null;
    case "Point":
      return marker(c, markerRadius);
    case "MultiPoint":  // QuPath's "points" annotations: one square per point, as one shape
      return c.length ? multiPolygon(c.map((p) => square(p, markerRadius))) : null;
    case "LineString":
      return c.length > 1 ? polyline(c) : null;
    case "MultiLineString": {  // shown by its longest line (read-only)
      const longest = [...c].sort((a, b) => b.length - a.length)[0];
      return longest && longest.length > 1 ? polyline(longest) : null;
    }
    default:
      return null;
  }
}

/** Whether an edit of the shape can be saved back as the same kind of geometry. */
export const editable = (geometry) => ["Polygon", "MultiPolygon", "Point", "LineString"].includes(geometry.type);

function rectangleCorners({ x, y, w, h, rot = 0 }) {
  // Annotorious may rotate a rectangle about its centre (radians).
  const [cx, cy] = [x + w / 2, y + h / 2];
  const [cos, sin] = [Math.cos(rot), Math.sin(rot)];
  return [[x, y], [x + w, y], [x + w, y + h], [x, y + h]].map(([px, py]) => {
    const [dx, dy] = [px - cx, py - cy];
    return [cx + dx * cos - dy * sin, cy + dx * sin + dy * cos];
  });
}

/** The GeoJSON geometry for an Annotorious shape; `original` keeps a Polygon with holes a Polygon. */
export function toGeometry(selector, original) {
  const g = selector.geometry;
  switch (selector.type) {
    case "RECTANGLE":
      return { type: "Polygon", coordinates: [close(rectangleCorners(g))] };
    case "POLYGON":
      return { type: "Polygon", coordinates: [close(g.points)] };
    case "MULTIPOLYGON": {
      const polygons = g.polygons.map((p) => p.rings.map((ring) => close(ring.points)));
      return original?.type === "Polygon" && polygons.length === 1
        ? { type: "Polygon", coordinates: polygons[0] }
        : { type: "MultiPolygon", coordinates: polygons };
    }
    case "ELLIPSE":
      return { type: "Point", coordinates: point([g.cx, g.cy]) };
    case "POLYLINE":
      return { type: "LineString", coordinates: g.points.map((p) => point(p.point)) };
    case "LINE":
      return { type: "LineString", coordinates: g.points.map(point) };
    default:
      throw new Error(`cannot save a ${selector.type} shape`);
  }
}
