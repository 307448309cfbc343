/*-------------------------------------------------------------------------
 *
 * period.c
 *		Calendar periods of quotas in the tenant's time zone.
 *
 * A day, week, month or year is a span of *local* calendar time: at is
 * converted to local time and truncated there (L, as date_trunc(unit, at,
 * tz) does), and the period is [L, L + one unit) converted back with the
 * zone's rules.  So a day is 23 or 25 hours across a DST change, a month
 * always ends at local midnight on the 1st, and every period ends exactly
 * where the next begins, even in zones where local midnight is skipped or
 * repeated (see QuotaPeriodBounds).  Weeks are ISO weeks (Monday).  Minutes
 * and hours are fixed lengths of time starting at a local minute or hour.
 * A lifetime period starts at -infinity and never ends.
 *
 *-------------------------------------------------------------------------
 */
#include "quota_ext.h"
#include "args.h"
#include "period.h"

#include "access/htup_details.h"
#include "funcapi.h"
#include "utils/builtins.h"
#include "utils/datetime.h"
#include "utils/fmgrprotos.h"
#include "utils/timestamp.h"

PG_FUNCTION_INFO_V1(quota_ext_period_bounds);

static const char *const period_names[] = {
	[QUOTA_PERIOD_MINUTE] = "minute",
	[QUOTA_PERIOD_HOUR] = "hour",
	[QUOTA_PERIOD_DAY] = "day",
	[QUOTA_PERIOD_WEEK] = "week",
	[QUOTA_PERIOD_MONTH] = "month",
	[QUOTA_PERIOD_YEAR] = "year",
	[QUOTA_PERIOD_LIFETIME] = "lifetime",
};

/*
 * QuotaPeriodParse
 *		A period word (normalized or as the seeds write it) to its kind;
 *		-1 when unknown.
 */
int
QuotaPeriodParse(const char *s)
{
	static const struct
	{
		const char *word;
		QuotaPeriod period;
	}			words[] = {
		{"minute", QUOTA_PERIOD_MINUTE}, {"minutely", QUOTA_PERIOD_MINUTE},
		{"hour", QUOTA_PERIOD_HOUR}, {"hourly", QUOTA_PERIOD_HOUR},
		{"day", QUOTA_PERIOD_DAY}, {"daily", QUOTA_PERIOD_DAY},
		{"week", QUOTA_PERIOD_WEEK}, {"weekly", QUOTA_PERIOD_WEEK},
		{"month", QUOTA_PERIOD_MONTH}, {"monthly", QUOTA_PERIOD_MONTH},
		{"year", QUOTA_PERIOD_YEAR}, {"yearly", QUOTA_PERIOD_YEAR},
		{"annual", QUOTA_PERIOD_YEAR}, {"annually", QUOTA_PERIOD_YEAR},
		{"lifetime", QUOTA_PERIOD_LIFETIME}, {"never", QUOTA_PERIOD_LIFETIME},
		{"total", QUOTA_PERIOD_LIFETIME},
	};
	int			i;

	for (i = 0; i < (int) lengthof(words); i++)
		if (pg_strcasecmp(s, words[i].word) == 0)
			return words[i].period;
	return -1;
}

/*
 * QuotaPeriodBounds
 *		[*start, *end) of the period of kind p containing at, in zone tz.
 *		For lifetime, start = -infinity and end = +infinity.
 */
void
QuotaPeriodBounds(QuotaPeriod p, text *tz, TimestampTz at,
				  TimestampTz *start, TimestampTz *end)
{
	Interval	one = {0, 0, 0};
	Datum		local;

	if (p == QUOTA_PERIOD_LIFETIME)
	{
		TIMESTAMP_NOBEGIN(*start);
		TIMESTAMP_NOEND(*end);
		return;
	}
	switch (p)
	{
		case QUOTA_PERIOD_MINUTE:
			one.time = USECS_PER_MINUTE;
			break;
		case QUOTA_PERIOD_HOUR:
			one.time = USECS_PER_HOUR;
			break;
		case QUOTA_PERIOD_DAY:
			one.day = 1;
			break;
		case QUOTA_PERIOD_WEEK:
			one.day = 7;
			break;
		case QUOTA_PERIOD_MONTH:
			one.month = 1;
			break;
		case QUOTA_PERIOD_YEAR:
			one.month = 12;
			break;
		case QUOTA_PERIOD_LIFETIME:
			break;
	}
	if (p == QUOTA_PERIOD_MINUTE || p == QUOTA_PERIOD_HOUR)
	{
		/* fixed-length units: no local-time detour (a DST hour is an hour) */
		*start = DatumGetTimestampTz(DirectFunctionCall3(timestamptz_trunc_zone,
														 CStringGetTextDatum(period_names[p]),
														 TimestampTzGetDatum(at),
														 PointerGetDatum(tz)));
		*end = *start + one.time;
		return;
	}
	/*
	 * Both ends come from the truncated *local* time L: start = L in tz, end
	 * = L + one unit in tz, so a period ends exactly where the next begins.
	 * (Converting start back to local time is not the same thing when local
	 * midnight does not exist: America/Santiago skips 00:00-01:00 on its
	 * spring-forward day, start resolves to 01:00, and start + 1 day would
	 * overlap the next day by an hour.)  When L happens twice (America/Havana
	 * falls back from 01:00 to 00:00), PostgreSQL resolves it to the later
	 * instant, which lies after the first pass through that hour; such an
	 * instant belongs to the previous period, whose end is that same start.
	 */
	local = DirectFunctionCall2(timestamptz_zone, PointerGetDatum(tz),
								TimestampTzGetDatum(at));
	local = DirectFunctionCall2(timestamp_trunc,
								CStringGetTextDatum(period_names[p]), local);
	*start = DatumGetTimestampTz(DirectFunctionCall2(timestamp_zone, PointerGetDatum(tz), local));
	if (*start > at)
	{
		local = DirectFunctionCall2(timestamp_mi_interval, local, IntervalPGetDatum(&one));
		*start = DatumGetTimestampTz(DirectFunctionCall2(timestamp_zone, PointerGetDatum(tz),
														 local));
	}
	local = DirectFunctionCall2(timestamp_pl_interval, local, IntervalPGetDatum(&one));
	*end = DatumGetTimestampTz(DirectFunctionCall2(timestamp_zone, PointerGetDatum(tz), local));
}

const char *
QuotaPeriodName(QuotaPeriod p)
{
	return period_names[p];
}

/*
 * quota_ext.period_bounds(period text, timezone text, at timestamptz)
 *		RETURNS (period_start timestamptz, period_end timestamptz)
 *
 * Lifetime gives (-infinity, infinity).
 */
Datum
quota_ext_period_bounds(PG_FUNCTION_ARGS)
{
	Datum		values[2];
	bool		nulls[2] = {false, false};
	char	   *word;
	int			p;
	TimestampTz start;
	TimestampTz end;

	QuotaArgNotNull(fcinfo, 0, "period");
	QuotaArgNotNull(fcinfo, 1, "timezone");
	QuotaArgNotNull(fcinfo, 2, "at");
	word = text_to_cstring(PG_GETARG_TEXT_PP(0));
	p = QuotaPeriodParse(word);
	if (p < 0)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("invalid period \"%s\"", QuotaQuoteInput(word)),
				 errhint("Use minute, hour, day, week, month, year or lifetime.")));
	if (TIMESTAMP_NOT_FINITE(PG_GETARG_TIMESTAMPTZ(2)))
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("at must be a finite timestamp")));
	QuotaPeriodBounds((QuotaPeriod) p, PG_GETARG_TEXT_PP(1), PG_GETARG_TIMESTAMPTZ(2),
					  &start, &end);
	values[0] = TimestampTzGetDatum(start);
	values[1] = TimestampTzGetDatum(end);
	PG_RETURN_DATUM(QuotaResultRow(fcinfo, values, nulls));
}
