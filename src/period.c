/*-------------------------------------------------------------------------
 *
 * period.c
 *		Calendar periods of quotas in the tenant's time zone.
 *
 * A period starts at date_trunc(unit, at, tenant time zone) — the same
 * function SQL users know, DST-correct because PostgreSQL truncates in local
 * time and converts back with the zone's rules.  It ends one unit of *local*
 * time later: start is converted to local time, the unit is added there
 * (timestamp + interval has no time zone), and the result converted back.
 * So a day is 23 or 25 hours across a DST change and a month always ends at
 * local midnight on the 1st.  Weeks are ISO weeks (Monday).  A lifetime
 * period starts at -infinity and never ends.
 *
 *-------------------------------------------------------------------------
 */
#include "quota_ext.h"

#include "access/htup_details.h"
#include "funcapi.h"
#include "utils/builtins.h"
#include "utils/datetime.h"
#include "utils/fmgrprotos.h"
#include "utils/timestamp.h"

PG_FUNCTION_INFO_V1(period_bounds);

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
	*start = DatumGetTimestampTz(DirectFunctionCall3(timestamptz_trunc_zone,
													 CStringGetTextDatum(period_names[p]),
													 TimestampTzGetDatum(at),
													 PointerGetDatum(tz)));
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
		*end = *start + one.time;
		return;
	}
	local = DirectFunctionCall2(timestamptz_zone, PointerGetDatum(tz),
								TimestampTzGetDatum(*start));
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
period_bounds(PG_FUNCTION_ARGS)
{
	TupleDesc	tupdesc;
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
				 errmsg("invalid period \"%s\"", word),
				 errhint("Use minute, hour, day, week, month, year or lifetime.")));
	if (TIMESTAMP_NOT_FINITE(PG_GETARG_TIMESTAMPTZ(2)))
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("at must be a finite timestamp")));
	if (get_call_result_type(fcinfo, NULL, &tupdesc) != TYPEFUNC_COMPOSITE)
		elog(ERROR, "return type must be a row type");
	QuotaPeriodBounds((QuotaPeriod) p, PG_GETARG_TEXT_PP(1), PG_GETARG_TIMESTAMPTZ(2),
					  &start, &end);
	values[0] = TimestampTzGetDatum(start);
	values[1] = TimestampTzGetDatum(end);
	PG_RETURN_DATUM(HeapTupleGetDatum(heap_form_tuple(BlessTupleDesc(tupdesc),
													  values, nulls)));
}
