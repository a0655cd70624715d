import type { Channel, Preferences, PreferencesPatch } from "@herald/client";
import { useEffect, useId, useMemo, useState } from "react";

import { useHeraldContext, useStrings } from "../context";
import { usePreferences, usePush } from "../hooks";
import type { UsePushOptions } from "../hooks";
import { Icon } from "../icons";
import type { HeraldStrings } from "../strings";
import { relativeTime, useNow } from "../time";

/** The catalog's grouping (docs/protocol.md §6); types an operator added show under "other". */
export const DEFAULT_CATEGORIES: Record<string, string[]> = {
  course: ["COURSE_NEW_CONTENT", "COURSE_UPDATE", "COURSE_SCHEDULE_CHANGE"],
  assessment: ["ASSIGNMENT_DEADLINE", "QUIZ_AVAILABLE", "GRADE_RELEASED"],
  progress: ["MILESTONE_ACHIEVED", "CERTIFICATE_ISSUED", "COURSE_COMPLETED"],
  social: ["NEW_COMMENT", "NEW_REPLY", "INSTRUCTOR_MESSAGE"],
  system: ["SYSTEM_ANNOUNCEMENT", "SECURITY_ALERT"],
};

export interface PreferencesPanelProps {
  /** category → types, in display order (default: the built-in catalog). */
  categories?: Record<string, string[]>;
  channels?: Channel[];
  /** Types whose locked channels cannot be turned off (default SECURITY_ALERT). */
  criticalTypes?: string[];
  /** The channels a critical type keeps (default in-app and email). */
  lockedChannels?: Channel[];
  /** Choices of the time-zone picker (default: every zone the browser knows). */
  timeZones?: string[];
  /** Web Push options, or false to hide the push section. */
  push?: UsePushOptions | false;
  strings?: Partial<HeraldStrings>;
  className?: string;
}

const FALLBACK_ZONES = ["UTC", "Europe/London", "Europe/Berlin", "America/New_York", "America/Los_Angeles", "Asia/Tokyo"];

function browserZones(): string[] {
  const intl = Intl as unknown as { supportedValuesOf?: (key: string) => string[] };
  try {
    return intl.supportedValuesOf?.("timeZone") ?? FALLBACK_ZONES;
  } catch {
    return FALLBACK_ZONES;
  }
}

function browserZone(): string {
  try {
    return Intl.DateTimeFormat().resolvedOptions().timeZone || "UTC";
  } catch {
    return "UTC";
  }
}

interface QuietDraft {
  enabled: boolean;
  start: string;
  end: string;
  timezone: string;
}

// Quiet hours may be stored without a time zone (docs/protocol.md amendment 20): the profile's zone
// applies then, else UTC, and this panel cannot know the profile's. The draft shows the browser's zone
// instead, and saving stores the zone shown: what the form shows is what gets saved, so the saved quiet
// hours do not depend on a zone the user never saw. Until then a note under the picker says that no zone
// is saved and that saving will store the one shown, so the change is not silent. (Sending no zone when
// the picker was left alone would keep the profile's zone, but behind a picker showing another one.)
function draftOf(prefs: Preferences | null): QuietDraft {
  const quiet = prefs?.quiet_hours;
  return quiet
    ? { enabled: true, start: quiet.start, end: quiet.end, timezone: quiet.timezone || browserZone() }
    : { enabled: false, start: "22:00", end: "07:00", timezone: browserZone() };
}

/** Channels × types switches, quiet hours with a time-zone picker, and push for this browser. */
export function PreferencesPanel({
  categories = DEFAULT_CATEGORIES,
  channels = ["in_app", "email", "push"],
  criticalTypes = ["SECURITY_ALERT"],
  lockedChannels = ["in_app", "email"],
  timeZones,
  push = {},
  strings: overrides,
  className,
}: PreferencesPanelProps) {
  const strings = useStrings(overrides);
  const { locale, theme } = useHeraldContext();
  const { preferences, error, saving, update, reset } = usePreferences();
  const [failure, setFailure] = useState<string | null>(null);
  const [quiet, setQuiet] = useState<QuietDraft>(() => draftOf(preferences));
  const zones = useMemo(() => timeZones ?? browserZones(), [timeZones]);
  const now = useNow();
  const base = useId();
  const quietKey = JSON.stringify(preferences?.quiet_hours ?? null);

  // A change saved elsewhere (another tab or device) replaces the draft.
  useEffect(() => {
    setQuiet(draftOf(preferences));
    // eslint-disable-next-line react-hooks/exhaustive-deps
  }, [quietKey]);

  const save = (patch: PreferencesPatch) => {
    setFailure(null);
    update(patch).catch((err: Error & { serverMessage?: string }) => setFailure(err.serverMessage ?? err.message));
  };

  const groups = useMemo(() => {
    if (!preferences) return [];
    const listed = new Set(Object.values(categories).flat());
    const extra = Object.keys(preferences.types).filter((type) => !listed.has(type));
    const all = extra.length ? { ...categories, other: [...(categories.other ?? []), ...extra] } : categories;
    return Object.entries(all)
      .map(([category, types]) => [category, types.filter((type) => type in preferences.types)] as const)
      .filter(([, types]) => types.length);
  }, [preferences, categories]);

  const zoneChoices = zones.includes(quiet.timezone) ? zones : [quiet.timezone, ...zones];
  const zoneUnsaved = Boolean(quiet.enabled && preferences?.quiet_hours && !preferences.quiet_hours.timezone);
  let status = strings.defaults;
  if (saving) status = strings.saving;
  else if (preferences?.updated_at) status = `${strings.saved} ${relativeTime(preferences.updated_at, now, locale, strings.justNow)}`;

  return (
    <section className={`herald herald-prefs${className ? ` ${className}` : ""}`} data-herald-theme={theme} aria-labelledby={`${base}-title`}>
      <h2 id={`${base}-title`} className="herald-prefs-title">
        {strings.preferencesTitle}
      </h2>
      {(failure || (error && !preferences)) && (
        <p className="herald-error" role="alert">
          {failure ?? strings.loadError}
        </p>
      )}
      {!preferences ? (
        <p className="herald-muted">{strings.loading}</p>
      ) : (
        <>
          <table className="herald-prefs-grid">
            <caption className="herald-sr-only">{strings.preferencesTitle}</caption>
            <thead>
              <tr>
                <th scope="col">{strings.typeColumn}</th>
                {channels.map((channel) => (
                  <th scope="col" key={channel}>
                    {strings.channelLabel(channel)}
                  </th>
                ))}
              </tr>
            </thead>
            <tbody>
              <tr className="herald-prefs-master">
                <th scope="row">{strings.allNotifications}</th>
                {channels.map((channel) => (
                  <td key={channel}>
                    <input
                      type="checkbox"
                      name={`channels.${channel}`}
                      aria-label={`${strings.allNotifications}: ${strings.channelLabel(channel)}`}
                      checked={Boolean(preferences.channels[channel])}
                      onChange={(event) => save({ channels: { [channel]: event.target.checked } })}
                    />
                  </td>
                ))}
              </tr>
              {groups.map(([category, types]) => [
                <tr key={`group-${category}`} className="herald-prefs-group">
                  <th scope="colgroup" colSpan={channels.length + 1}>
                    {strings.categoryLabel(category)}
                  </th>
                </tr>,
                ...types.map((type) => {
                  const critical = criticalTypes.includes(type);
                  return (
                    <tr key={type} data-type={type}>
                      <th scope="row">{strings.typeLabel(type)}</th>
                      {channels.map((channel) => {
                        const locked = critical && lockedChannels.includes(channel);
                        const label = `${strings.typeLabel(type)}: ${strings.channelLabel(channel)}`;
                        return (
                          <td key={channel}>
                            <input
                              type="checkbox"
                              name={`types.${type}.${channel}`}
                              aria-label={locked ? `${label} (${strings.locked})` : label}
                              checked={locked || Boolean(preferences.types[type]?.[channel])}
                              disabled={locked || !preferences.channels[channel]}
                              onChange={(event) => save({ types: { [type]: { [channel]: event.target.checked } } })}
                            />
                            {locked && (
                              <span className="herald-lock" title={strings.locked}>
                                <Icon name="lock" />
                              </span>
                            )}
                          </td>
                        );
                      })}
                    </tr>
                  );
                }),
              ])}
            </tbody>
          </table>

          <fieldset className="herald-quiet">
            <legend>{strings.quietHours}</legend>
            <p className="herald-muted" id={`${base}-quiet-hint`}>
              {strings.quietHoursHint}
            </p>
            <label className="herald-row">
              <input
                type="checkbox"
                name="quiet.enabled"
                checked={quiet.enabled}
                aria-describedby={`${base}-quiet-hint`}
                onChange={(event) => setQuiet({ ...quiet, enabled: event.target.checked })}
              />{" "}
              {strings.quietEnabled}
            </label>
            <div className="herald-quiet-fields">
              <label>
                {strings.quietFrom}{" "}
                <input
                  type="time"
                  name="quiet.start"
                  value={quiet.start}
                  disabled={!quiet.enabled}
                  onChange={(event) => setQuiet({ ...quiet, start: event.target.value })}
                />
              </label>
              <label>
                {strings.quietTo}{" "}
                <input
                  type="time"
                  name="quiet.end"
                  value={quiet.end}
                  disabled={!quiet.enabled}
                  onChange={(event) => setQuiet({ ...quiet, end: event.target.value })}
                />
              </label>
              <label>
                {strings.timeZone}{" "}
                <select
                  name="quiet.timezone"
                  value={quiet.timezone}
                  disabled={!quiet.enabled}
                  aria-describedby={zoneUnsaved ? `${base}-zone-hint` : undefined}
                  onChange={(event) => setQuiet({ ...quiet, timezone: event.target.value })}
                >
                  {zoneChoices.map((zone) => (
                    <option key={zone} value={zone}>
                      {zone.replace(/_/g, " ")}
                    </option>
                  ))}
                </select>
              </label>
            </div>
            {zoneUnsaved && (
              <p className="herald-muted" id={`${base}-zone-hint`}>
                {strings.quietZoneUnsaved}
              </p>
            )}
            <button
              type="button"
              className="herald-button herald-quiet-save"
              onClick={() =>
                save({ quiet_hours: quiet.enabled ? { start: quiet.start, end: quiet.end, timezone: quiet.timezone } : null })
              }
            >
              {strings.save}
            </button>
          </fieldset>

          {push !== false && <PushSection options={push} strings={strings} />}

          <footer className="herald-prefs-foot">
            <span className="herald-muted herald-prefs-status" aria-live="polite">
              {status}
            </span>
            <button
              type="button"
              className="herald-button herald-danger"
              onClick={() => {
                setFailure(null);
                reset().catch((err: Error) => setFailure(err.message));
              }}
            >
              {strings.resetDefaults}
            </button>
          </footer>
        </>
      )}
    </section>
  );
}

function PushSection({ options, strings }: { options: UsePushOptions; strings: HeraldStrings }) {
  const push = usePush(options);
  let text: string | null = null;
  if (push.status === "unsupported") text = strings.pushUnsupported;
  else if (push.status === "denied") text = strings.pushDenied;
  else if (push.status === "on") text = strings.pushOn;
  return (
    <fieldset className="herald-push">
      <legend>{strings.pushTitle}</legend>
      {text && <p className="herald-muted">{text}</p>}
      {push.error && (
        <p className="herald-error" role="alert">
          {push.error.message}
        </p>
      )}
      {push.supported && push.status !== "denied" && (
        <button
          type="button"
          className="herald-button"
          disabled={push.busy}
          onClick={() => (push.status === "on" ? push.unsubscribe() : push.subscribe()).catch(() => {})}
        >
          {push.status === "on" ? strings.pushDisable : strings.pushEnable}
        </button>
      )}
    </fieldset>
  );
}
