// 24×24 SVG paths: emoji would depend on the fonts installed where the page runs.
const PATHS = {
  bell: "M12 22a2.5 2.5 0 0 0 2.45-2h-4.9A2.5 2.5 0 0 0 12 22zm7-6V11a7 7 0 0 0-5.5-6.84V3.5a1.5 1.5 0 0 0-3 0v.66A7 7 0 0 0 5 11v5l-2 2v1h18v-1l-2-2z",
  course: "M4 4.5A2.5 2.5 0 0 1 6.5 2H20v17H6.5a1.5 1.5 0 0 0 0 3H20v-2h0v2H6.5A2.5 2.5 0 0 1 4 19.5zM8 6v2h8V6z",
  assessment: "M9 2h6v2h4v18H5V4h4zm0 2v2h6V4zm-1.5 9.5 3 3 6-6-1.4-1.4-4.6 4.6-1.6-1.6z",
  progress:
    "M7 3h10v2h4v3a5 5 0 0 1-5 5h-.3A5 5 0 0 1 13 15.9V19h4v2H7v-2h4v-3.1A5 5 0 0 1 8.3 13H8a5 5 0 0 1-5-5V5h4zm0 4H5v1a3 3 0 0 0 2 2.8zm10 0v3.8A3 3 0 0 0 19 8V7z",
  social: "M4 3h16a2 2 0 0 1 2 2v11a2 2 0 0 1-2 2H8l-5 4V5a2 2 0 0 1 1-2zm3 6v2h10V9zm0-3v2h10V6zm0 6v2h6v-2z",
  system: "M3 10v4a1 1 0 0 0 1 1h2l4 5h2v-5l7 4V5l-7 4H4a1 1 0 0 0-1 1z",
  other: "M12 22a2.5 2.5 0 0 0 2.45-2h-4.9A2.5 2.5 0 0 0 12 22zm7-6V11a7 7 0 0 0-14 0v5l-2 2v1h18v-1z",
  check: "M9.5 16.2 5.3 12l-1.4 1.4 5.6 5.6L20.6 7.9l-1.4-1.4z",
  dot: "M12 7a5 5 0 1 1 0 10 5 5 0 0 1 0-10z",
  trash: "M9 3h6l1 2h4v2H4V5h4zm-3 6h12l-1 12H7z",
  archive: "M3 3h18v5H3zm1 6h16v12H4zm5 3v2h6v-2z",
  unarchive: "M3 3h18v5H3zm1 6h16v12H4zm8 2-4 4h3v3h2v-3h3z",
  close: "M6.4 5 12 10.6 17.6 5 19 6.4 13.4 12 19 17.6 17.6 19 12 13.4 6.4 19 5 17.6 10.6 12 5 6.4z",
  lock: "M7 10V7a5 5 0 0 1 10 0v3h2v12H5V10zm2 0h6V7a3 3 0 0 0-6 0z",
};

export type IconName = keyof typeof PATHS;

export function Icon({ name }: { name: IconName }) {
  return (
    <svg className="herald-icon" viewBox="0 0 24 24" aria-hidden="true" focusable="false">
      <path d={PATHS[name]} />
    </svg>
  );
}

const CATEGORIES = new Set(["course", "assessment", "progress", "social", "system"]);

export function CategoryIcon({ category }: { category: string }) {
  const known = CATEGORIES.has(category) ? (category as IconName) : "other";
  return (
    <span className={`herald-category herald-cat-${known}`} aria-hidden="true">
      <Icon name={known} />
    </span>
  );
}
